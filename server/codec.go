package server

import (
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	kpb "github.com/voxserve/voxserve/proto/inference"
	pb "github.com/voxserve/voxserve/proto/voxserve/v1"
)

// codec is gRPC's protobuf codec, except for the inference requests: their
// byte fields (DICOM instances, tensor data, raw input contents, up to
// hundreds of MB) alias one contiguous copy of the message instead of
// being copied again by the protobuf decoder, which always copies bytes
// fields. Everything else is decoded by protobuf itself, field by field.
type codec struct{ proto encoding.CodecV2 }

func newCodec() codec { return codec{proto: encoding.GetCodecV2("proto")} }

func (c codec) Name() string { return c.proto.Name() }

func (c codec) Marshal(v any) (mem.BufferSlice, error) { return c.proto.Marshal(v) }

func (c codec) Unmarshal(data mem.BufferSlice, v any) error {
	switch m := v.(type) {
	case *pb.InferRequest, *pb.InferStreamRequest, *kpb.ModelInferRequest:
		// Materialize copies into a slice of our own (not the pool's), so
		// that the fields may alias it after gRPC frees data.
		return unmarshalAliased(data.Materialize(), m.(proto.Message))
	}
	return c.proto.Unmarshal(data, v)
}

func unmarshalAliased(b []byte, m proto.Message) error {
	proto.Reset(m)
	return decodeAliased(b, m.ProtoReflect())
}

// decodeAliased decodes b into m: bytes fields alias b, message fields
// recurse, and every other field is merged by protobuf from its own bytes.
func decodeAliased(b []byte, m protoreflect.Message) error {
	fields := m.Descriptor().Fields()
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		fd := fields.ByNumber(num)
		if fd != nil && typ == protowire.BytesType && !fd.IsMap() &&
			(fd.Kind() == protoreflect.BytesKind || fd.Kind() == protoreflect.MessageKind) {
			v, vn := protowire.ConsumeBytes(b[n:])
			if vn < 0 {
				return protowire.ParseError(vn)
			}
			v = v[:len(v):len(v)] // an append to it must not overwrite what follows
			switch {
			case fd.Kind() == protoreflect.BytesKind && fd.IsList():
				m.Mutable(fd).List().Append(protoreflect.ValueOfBytes(v))
			case fd.Kind() == protoreflect.BytesKind:
				m.Set(fd, protoreflect.ValueOfBytes(v))
			case fd.IsList():
				list := m.Mutable(fd).List()
				elem := list.NewElement()
				if err := decodeAliased(v, elem.Message()); err != nil {
					return err
				}
				list.Append(elem)
			default: // a singular (or oneof) message: repeats merge into it
				if err := decodeAliased(v, m.Mutable(fd).Message()); err != nil {
					return err
				}
			}
			b = b[n+vn:]
			continue
		}
		vn := protowire.ConsumeFieldValue(num, typ, b[n:])
		if vn < 0 {
			return protowire.ParseError(vn)
		}
		if err := (proto.UnmarshalOptions{Merge: true}).Unmarshal(b[:n+vn], m.Interface()); err != nil {
			return err
		}
		b = b[n+vn:]
	}
	return nil
}
