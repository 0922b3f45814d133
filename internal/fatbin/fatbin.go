// Package fatbin reads the CUDA fat binaries that nvcc embeds in a shared
// library's .nv_fatbin section, and takes out the machine code of the GPU
// architectures a machine does not have.
//
// Why: ONNX Runtime's CUDA provider (libonnxruntime_providers_cuda.so,
// 272 MB) carries its kernels for six architectures. A GPU session carries
// it to a Hopper machine in calls of at most 64 MiB; with every
// architecture but sm_90 taken out, it compresses from 171 MiB to 48 MiB
// and goes in one call. Each container is rewritten in place as nvcc would
// have written it for sm_90 alone, at the same start (where the library's
// registration record points), the bytes it frees zeroed; the file keeps
// its size and layout. A cubin built for another major version cannot run
// on the device anyway, so the CUDA runtime picks the same image as from
// the original.
//
// The layout is NVIDIA's (fatbinary_section.h and the fat binary headers
// nvcc writes): a run of containers, each a 16-byte header followed by
// entries, each entry a header followed by its padded payload.
package fatbin

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"fmt"
	"sort"
)

const (
	containerMagic = 0xBA55ED50
	// KindPTX and KindELF are an entry's kinds: PTX text, or a cubin.
	KindPTX = 1
	KindELF = 2

	containerHeaderSize = 16
	entryHeaderMin      = 32 // up to and including the architecture field
)

// Entry is one image in a container.
type Entry struct {
	Kind uint16 // KindPTX or KindELF
	Arch uint32 // e.g. 90 for sm_90 / compute_90
	// Container counts the containers before this entry's, and box is
	// where that container's header starts.
	Container, box int
	// Header locates the entry's header, and Offset and Size its payload
	// (padded), in the slice Entries was given.
	Header, Offset, Size int
}

// Entries walks a fat binary section (or a .fatbin file) and lists its
// images. Zero padding between containers is skipped; anything else that
// is not a container header, or a size that runs past the end, is an
// error naming the offset.
func Entries(sec []byte) ([]Entry, error) {
	var out []Entry
	le := binary.LittleEndian
	container := 0
	for pos := 0; pos < len(sec); {
		if len(sec)-pos < containerHeaderSize {
			if allZero(sec[pos:]) {
				break
			}
			return nil, fmt.Errorf("fatbin: %d stray bytes at offset %d", len(sec)-pos, pos)
		}
		if le.Uint32(sec[pos:]) != containerMagic {
			if le.Uint64(sec[pos:]) == 0 { // alignment padding between containers
				pos += 8
				continue
			}
			return nil, fmt.Errorf("fatbin: no container header at offset %d (magic %#x)", pos, le.Uint32(sec[pos:]))
		}
		hsz := int(le.Uint16(sec[pos+6:]))
		fsz := le.Uint64(sec[pos+8:])
		if hsz < containerHeaderSize || uint64(len(sec)-pos-hsz) < fsz || hsz > len(sec)-pos {
			return nil, fmt.Errorf("fatbin: container at offset %d: header %d + %d bytes run past the end (%d)", pos, hsz, fsz, len(sec))
		}
		end := pos + hsz + int(fsz)
		for e := pos + hsz; e < end; {
			if end-e < entryHeaderMin {
				return nil, fmt.Errorf("fatbin: entry at offset %d: truncated header", e)
			}
			ehsz := le.Uint32(sec[e+4:])
			padded := le.Uint32(sec[e+8:])
			if ehsz < entryHeaderMin || uint64(ehsz)+uint64(padded) > uint64(end-e) {
				return nil, fmt.Errorf("fatbin: entry at offset %d: header %d + payload %d run past its container (ends at %d)", e, ehsz, padded, end)
			}
			out = append(out, Entry{
				Kind:      le.Uint16(sec[e:]),
				Arch:      le.Uint32(sec[e+28:]),
				Container: container,
				box:       pos,
				Header:    e,
				Offset:    e + int(ehsz),
				Size:      int(padded),
			})
			e += int(ehsz) + int(padded)
		}
		pos = end
		container++
	}
	return out, nil
}

// Section returns the .nv_fatbin section of an ELF file as a slice of
// file (so that changes to it change the file).
func Section(file []byte) ([]byte, error) {
	f, err := elf.NewFile(bytes.NewReader(file))
	if err != nil {
		return nil, fmt.Errorf("fatbin: %w", err)
	}
	s := f.Section(".nv_fatbin")
	if s == nil {
		return nil, fmt.Errorf("fatbin: no .nv_fatbin section")
	}
	if s.Type == elf.SHT_NOBITS || s.Offset+s.Size > uint64(len(file)) {
		return nil, fmt.Errorf("fatbin: .nv_fatbin (offset %d, %d bytes) is not in the file (%d bytes)", s.Offset, s.Size, len(file))
	}
	return file[s.Offset : s.Offset+s.Size], nil
}

// Summary counts a section's images per kind and architecture.
type Summary map[string]struct{ Images, Bytes int }

// Summarize describes entries for a log line.
func Summarize(entries []Entry) Summary {
	s := Summary{}
	for _, e := range entries {
		k := fmt.Sprintf("%s_%d", kindName(e.Kind), e.Arch)
		v := s[k]
		v.Images++
		v.Bytes += e.Size
		s[k] = v
	}
	return s
}

func (s Summary) String() string {
	keys := make([]string, 0, len(s))
	for k := range s {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b bytes.Buffer
	for i, k := range keys {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s: %d images, %.1f MiB", k, s[k].Images, float64(s[k].Bytes)/(1<<20))
	}
	return b.String()
}

func kindName(k uint16) string {
	switch k {
	case KindPTX:
		return "compute"
	case KindELF:
		return "sm"
	}
	return fmt.Sprintf("kind%d", k)
}

// Keep rewrites sec to drop every cubin whose architecture is not arch,
// and every PTX whose container also holds an arch cubin (the driver
// would never compile it); zeroed reports what went. PTX is kept where it
// is a container's only way onto the device. A container with no image the
// device can load (a kernel built only for a newer architecture) could not
// run there before either: it is left as it is, and counted in foreign.
func Keep(sec []byte, arch uint32) (kept, zeroed Summary, foreign int, err error) {
	entries, err := Entries(sec)
	if err != nil {
		return nil, nil, 0, err
	}
	var groups [][]Entry
	for _, e := range entries {
		for len(groups) <= e.Container {
			groups = append(groups, nil)
		}
		groups[e.Container] = append(groups[e.Container], e)
	}
	var keep, drop []Entry
	for _, g := range groups {
		var cubin, ptx bool
		for _, e := range g {
			cubin = cubin || e.Kind == KindELF && e.Arch == arch
			ptx = ptx || e.Kind == KindPTX && e.Arch <= arch
		}
		if len(g) > 0 && !cubin && !ptx {
			foreign++
			continue
		}
		var k []Entry
		for _, e := range g {
			if e.Kind == KindELF && e.Arch == arch || e.Kind == KindPTX && !cubin && e.Arch <= arch {
				k = append(k, e)
			} else {
				drop = append(drop, e)
			}
		}
		if len(k) < len(g) {
			compact(sec, g, k)
		}
		keep = append(keep, k...)
	}
	return Summarize(keep), Summarize(drop), foreign, nil
}

// compact rewrites a container in place to hold only the entries kept,
// in their order, as nvcc would have written it for those architectures
// alone, and zeroes the bytes freed up to its old end. The container's
// start does not move: that is where the library's registration record
// points.
func compact(sec []byte, all, kept []Entry) {
	le := binary.LittleEndian
	first, end := all[0].Header, all[len(all)-1].Offset+all[len(all)-1].Size
	w := first
	for _, e := range kept {
		w += copy(sec[w:], sec[e.Header:e.Offset+e.Size])
	}
	clear(sec[w:end])
	le.PutUint64(sec[all[0].box+8:], uint64(w-first))
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
