package dicom

import (
	"bytes"
	"compress/flate"
	"encoding/binary"
	"fmt"
	"io"
)

// precheck walks the element headers of a Part 10 file and refuses one
// whose defined lengths claim more bytes than the file holds, before the
// parser sees it: the parser allocates a value's claimed length up front,
// so a 100-byte file claiming a 4 GB element would cost 4 GB.
//
// The walk is linear: an element or item of defined length is skipped after
// its length is checked; one of undefined length is entered, so that
// sequence items and encapsulated fragments are checked too. A deflated body
// is inflated (within MaxInstance) and walked.
func precheck(data []byte) error {
	// Part 10 only: without the preamble the parser guesses the syntax, and
	// a guess we did not make could walk past our checks.
	if !IsDICOM(data) {
		return fmt.Errorf("no DICM prefix at byte 128: not a DICOM Part 10 file")
	}
	explicit, bo := false, binary.ByteOrder(binary.LittleEndian)
	// File meta group: always explicit VR little endian.
	pos, ts, err := walkMeta(data, 132)
	if err != nil {
		return err
	}
	switch ts {
	case ImplicitVRLittleEndian, "":
	case ExplicitVRBigEndian:
		explicit, bo = true, binary.BigEndian
	case DeflatedExplicitVRLE:
		body, err := io.ReadAll(io.LimitReader(flate.NewReader(bytes.NewReader(data[pos:])), MaxInstance+1))
		if err != nil {
			return nil // let the parser report the broken stream
		}
		if len(body) > MaxInstance {
			return fmt.Errorf("deflated data expands beyond %d bytes", MaxInstance)
		}
		return walk(body, 0, true, binary.LittleEndian)
	default:
		explicit = true
	}
	return walk(data, pos, explicit, bo)
}

func walkMeta(data []byte, pos int) (int, string, error) {
	ts := ""
	for pos+8 <= len(data) {
		group := binary.LittleEndian.Uint16(data[pos:])
		if group != 0x0002 {
			break
		}
		elem := binary.LittleEndian.Uint16(data[pos+2:])
		hdr, vl, undefined := header(data[pos:], true, binary.LittleEndian)
		if hdr == 0 {
			return 0, "", fmt.Errorf("truncated file meta element (0002,%04X)", elem)
		}
		if undefined || int64(vl) > int64(len(data)-pos-hdr) {
			return 0, "", fmt.Errorf("file meta element (0002,%04X) claims %d bytes, %d remain", elem, vl, len(data)-pos-hdr)
		}
		if elem == 0x0010 {
			ts = string(bytes.TrimRight(data[pos+hdr:pos+hdr+int(vl)], " \x00"))
		}
		pos += hdr + int(vl)
	}
	return pos, ts, nil
}

// header decodes an element header at b: its size, value length, and
// whether the length is undefined. A size of 0 means b is too short.
func header(b []byte, explicit bool, bo binary.ByteOrder) (int, uint32, bool) {
	if len(b) < 8 {
		return 0, 0, false
	}
	group := bo.Uint16(b)
	if group == 0xFFFE { // items and delimiters: no VR
		vl := bo.Uint32(b[4:])
		return 8, vl, vl == 0xFFFFFFFF
	}
	if !explicit {
		vl := bo.Uint32(b[4:])
		return 8, vl, vl == 0xFFFFFFFF
	}
	switch string(b[4:6]) {
	case "OB", "OW", "OF", "OD", "OL", "OV", "SQ", "UT", "UN", "UC", "UR", "SV", "UV":
		if len(b) < 12 {
			return 0, 0, false
		}
		vl := bo.Uint32(b[8:])
		return 12, vl, vl == 0xFFFFFFFF
	}
	return 8, uint32(bo.Uint16(b[6:])), false
}

func walk(data []byte, pos int, explicit bool, bo binary.ByteOrder) error {
	for pos < len(data) {
		hdr, vl, undefined := header(data[pos:], explicit, bo)
		if hdr == 0 {
			return nil // a truncated tail: the parser reports it
		}
		if explicit && len(data)-pos >= 6 && string(data[pos+4:pos+6]) == "UN" && undefined {
			return nil // UN of undefined length holds implicit VR data: stop checking here
		}
		pos += hdr
		if undefined {
			continue
		}
		if int64(vl) > int64(len(data)-pos) {
			return fmt.Errorf("element (%04X,%04X) claims %d bytes, %d remain", bo.Uint16(data[pos-hdr:]), bo.Uint16(data[pos-hdr+2:]), vl, len(data)-pos)
		}
		pos += int(vl)
	}
	return nil
}
