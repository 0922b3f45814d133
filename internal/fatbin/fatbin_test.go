package fatbin

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// image is one entry to build: kind, architecture, payload.
type image struct {
	kind    uint16
	arch    uint32
	payload string
}

// entry writes an entry as nvcc does: a 64-byte header, then the payload
// padded to 8 bytes.
func entry(im image) []byte {
	le := binary.LittleEndian
	padded := (len(im.payload) + 7) &^ 7
	h := make([]byte, 64)
	le.PutUint16(h[0:], im.kind)
	le.PutUint16(h[2:], 0x101)
	le.PutUint32(h[4:], 64)
	le.PutUint32(h[8:], uint32(padded))
	le.PutUint32(h[20:], uint32(len(im.payload)))
	le.PutUint32(h[28:], im.arch)
	le.PutUint32(h[32:], 1)
	le.PutUint64(h[40:], 0x11)
	p := make([]byte, padded)
	copy(p, im.payload)
	return append(h, p...)
}

func container(ims ...image) []byte {
	var body []byte
	for _, im := range ims {
		body = append(body, entry(im)...)
	}
	h := make([]byte, 16)
	binary.LittleEndian.PutUint32(h[0:], containerMagic)
	binary.LittleEndian.PutUint16(h[4:], 1)
	binary.LittleEndian.PutUint16(h[6:], 16)
	binary.LittleEndian.PutUint64(h[8:], uint64(len(body)))
	return append(h, body...)
}

// section lays containers out with zero padding between them, as the
// linker does for alignment.
func section(cs ...[]byte) []byte {
	var s []byte
	for _, c := range cs {
		s = append(s, c...)
		s = append(s, make([]byte, 16)...)
	}
	return s
}

type got struct {
	Container int
	Kind      uint16
	Arch      uint32
	Payload   string
}

func read(t *testing.T, sec []byte) []got {
	t.Helper()
	es, err := Entries(sec)
	require.NoError(t, err)
	var out []got
	for _, e := range es {
		out = append(out, got{e.Container, e.Kind, e.Arch, string(bytes.TrimRight(sec[e.Offset:e.Offset+e.Size], "\x00"))})
	}
	return out
}

func TestKeep(t *testing.T) {
	sec := section(
		container(image{KindELF, 75, "turing"}, image{KindELF, 90, "hopper-a"}, image{KindPTX, 90, "ptx-90"}),
		container(image{KindPTX, 80, "ptx-80 only"}),
		container(image{KindELF, 120, "blackwell only"}),
		container(image{KindELF, 90, "hopper-b"}, image{KindELF, 86, "ampere"}),
		container(image{KindELF, 80, "ampere"}, image{KindPTX, 80, "ptx-80"}, image{KindPTX, 100, "ptx-100"}),
	)
	size := len(sec)
	kept, zeroed, foreign, err := Keep(sec, 90)
	require.NoError(t, err)
	assert.Equal(t, size, len(sec), "the section keeps its size")
	assert.Equal(t, 1, foreign)
	assert.Equal(t, 2, kept["sm_90"].Images)
	assert.Equal(t, 2, kept["compute_80"].Images)
	assert.Equal(t, Summary{
		"sm_75": {1, 8}, "compute_90": {1, 8}, "sm_86": {1, 8}, "sm_80": {1, 8}, "compute_100": {1, 8},
	}, zeroed)
	assert.Equal(t, []got{
		{0, KindELF, 90, "hopper-a"},
		{1, KindPTX, 80, "ptx-80 only"},
		{2, KindELF, 120, "blackwell only"}, // no use on sm_90 either way: left alone
		{3, KindELF, 90, "hopper-b"},
		{4, KindPTX, 80, "ptx-80"}, // the driver compiles the newest PTX it can
	}, read(t, sec))
	for _, gone := range []string{"turing", "ampere", "ptx-90", "ptx-100"} {
		assert.NotContains(t, string(sec), gone, "freed bytes are zeroed")
	}

	// Pruning again changes nothing.
	again := bytes.Clone(sec)
	_, zeroed, _, err = Keep(again, 90)
	require.NoError(t, err)
	assert.Empty(t, zeroed)
	assert.Equal(t, sec, again)
}

func TestEntriesRefusesBrokenSections(t *testing.T) {
	good := section(container(image{KindELF, 90, "hopper"}))
	le := binary.LittleEndian
	for _, tc := range []struct {
		name   string
		mutate func([]byte) []byte
		want   string
	}{
		{"truncated container", func(b []byte) []byte { return b[:40] }, "run past the end"},
		{"garbage instead of a header", func(b []byte) []byte { le.PutUint32(b, 0xdeadbeef); return b }, "no container header at offset 0"},
		{"entry larger than its container", func(b []byte) []byte { le.PutUint32(b[16+8:], 1<<20); return b }, "run past its container"},
		{"entry header too short", func(b []byte) []byte { le.PutUint32(b[16+4:], 8); return b }, "entry at offset 16"},
		{"stray bytes at the end", func(b []byte) []byte { return append(b, 1, 2, 3) }, "stray bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Entries(tc.mutate(bytes.Clone(good)))
			assert.ErrorContains(t, err, tc.want)
		})
	}
	es, err := Entries(good)
	require.NoError(t, err)
	assert.Len(t, es, 1)
}

func TestSectionOfNonELF(t *testing.T) {
	_, err := Section([]byte("not an ELF file"))
	assert.Error(t, err)
	self, err := os.Executable()
	require.NoError(t, err)
	b, err := os.ReadFile(self)
	require.NoError(t, err)
	_, err = Section(b)
	assert.ErrorContains(t, err, "no .nv_fatbin section")
}

// TestNVCCLibrary reads and prunes a shared library as NVIDIA's compiler
// writes it, and has NVIDIA's cuobjdump read the result.
func TestNVCCLibrary(t *testing.T) {
	bin, _ := filepath.Abs("../../.deps/cuda/bin")
	nvcc := filepath.Join(bin, "nvcc")
	if _, err := os.Stat(nvcc); err != nil {
		if os.Getenv("VOXSERVE_REQUIRE_NVCC") != "" {
			t.Fatalf("no %s (make deps-cuda)", nvcc)
		}
		t.Skip("no .deps/cuda (make deps-cuda)")
	}
	lib := filepath.Join(t.TempDir(), "libk.so")
	// Two containers' worth of architectures, as ONNX Runtime's provider
	// has: machine code for Turing and Hopper, and Hopper's PTX.
	out, err := exec.Command(nvcc, "-shared", "-Xcompiler", "-fPIC", "-cudart", "none",
		"-gencode", "arch=compute_75,code=sm_75", "-gencode", "arch=compute_90,code=[sm_90,compute_90]",
		"-o", lib, "../../kernels/src/voxkernels.cu").CombinedOutput()
	require.NoError(t, err, "%s", out)
	file, err := os.ReadFile(lib)
	require.NoError(t, err)
	sec, err := Section(file)
	require.NoError(t, err)
	es, err := Entries(sec)
	require.NoError(t, err)
	var archs []string
	var hopper []byte
	for _, e := range es {
		archs = append(archs, fmt.Sprintf("%s_%d", kindName(e.Kind), e.Arch))
		if e.Kind == KindELF && e.Arch == 90 {
			hopper = bytes.Clone(sec[e.Header : e.Offset+e.Size])
		}
	}
	assert.ElementsMatch(t, []string{"sm_75", "sm_90", "compute_90"}, archs)

	_, zeroed, _, err := Keep(sec, 90)
	require.NoError(t, err)
	assert.Equal(t, 1, zeroed["sm_75"].Images)
	assert.Equal(t, 1, zeroed["compute_90"].Images)
	es, err = Entries(sec)
	require.NoError(t, err)
	require.Len(t, es, 1)
	assert.Equal(t, hopper, sec[es[0].Header:es[0].Offset+es[0].Size], "the sm_90 image is moved, byte for byte")
	require.NoError(t, os.WriteFile(lib, file, 0o644))

	out, err = exec.Command(filepath.Join(bin, "cuobjdump"), "-lelf", "-lptx", lib).CombinedOutput()
	require.NoError(t, err, "%s", out)
	var images []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "ELF file") || strings.HasPrefix(l, "PTX file") {
			images = append(images, l)
		}
	}
	assert.Equal(t, []string{"ELF file    1: libk.1.sm_90.cubin"}, images, "%s", out)
}

// FuzzEntries: a fat binary from outside (a library carried to a GPU
// machine) never panics the parser or the pruner, and what the pruner
// writes parses again with only what it kept.
func FuzzEntries(f *testing.F) {
	f.Add(section(container(image{KindELF, 75, "a"}, image{KindELF, 90, "b"}), container(image{KindPTX, 80, "c"})))
	f.Add(section(container(image{KindELF, 120, "x"})))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, sec []byte) {
		if _, err := Entries(sec); err != nil {
			return
		}
		kept, _, _, err := Keep(sec, 90)
		require.NoError(t, err)
		es, err := Entries(sec)
		require.NoError(t, err)
		n := 0
		for _, v := range kept {
			n += v.Images
		}
		assert.LessOrEqual(t, n, len(es))
	})
}
