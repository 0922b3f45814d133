package audit

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/voxserve/voxserve/findings"
)

func write(t *testing.T, path string, n int) {
	t.Helper()
	l, err := Open(path)
	require.NoError(t, err)
	for i := 0; i < n; i++ {
		require.NoError(t, l.Append(Record{Method: "/voxserve.v1.Inference/Infer", Model: "ich", Version: "1", Code: "OK",
			Principal: "pacs-router", Input: &Input{SHA256: strings.Repeat("ab", 32), Parts: 3, Bytes: 1 << 20},
			Result: &Result{Findings: []findings.Finding{{Label: "hemorrhage", Probability: 0.97, Threshold: 0.5, Present: true}}}}))
	}
	require.NoError(t, l.Close())
}

func verify(t *testing.T, path string) (Summary, error) {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	return Verify(f)
}

func lines(t *testing.T, path string) []string {
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return strings.SplitAfter(strings.TrimSuffix(string(b), "\n"), "\n")
}

func TestChainAcrossRestarts(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	write(t, path, 3)
	write(t, path, 2) // a restart continues the chain
	s, err := verify(t, path)
	require.NoError(t, err)
	assert.Equal(t, 5, s.Records)
	assert.Equal(t, uint64(5), s.LastSeq)
	ls := lines(t, path)
	assert.Regexp(t, `^\{"seq":1,"time":"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z","principal":"pacs-router","method":"/voxserve.v1.Inference/Infer","model":"ich","version":"1",`+
		`"input":\{"sha256":"(ab){32}","parts":3,"bytes":1048576\},"code":"OK","result":\{"findings":\[\{"label":"hemorrhage","probability":0.97,"threshold":0.5,"present":true\}\]\},`+
		`"duration_ms":0,"prev":"","hash":"[0-9a-f]{64}"\}\n$`, ls[0], "the field names are pinned")
	info, err := os.Stat(path)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), info.Mode().Perm(), "readable by voxserve's user alone")
}

// TestTamperingBreaksTheChain: changing, removing, reordering or
// inserting a line is found, and the error names the line.
func TestTamperingBreaksTheChain(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	write(t, path, 5)
	orig := lines(t, path)
	for _, tc := range []struct {
		name   string
		mutate func([]string) []string
		want   string
	}{
		{"a changed probability", func(l []string) []string {
			l[2] = strings.Replace(l[2], `"probability":0.97`, `"probability":0.07`, 1)
			return l
		}, "line 3: its hash does not match its content"},
		{"a changed hash", func(l []string) []string {
			l[1] = l[1][:len(l[1])-5] + `0"}` + "\n"
			return l
		}, "line 2"},
		{"a removed line", func(l []string) []string { return append(l[:2:2], l[3:]...) }, "line 3 (seq 4): prev"},
		{"two lines swapped", func(l []string) []string { l[1], l[2] = l[2], l[1]; return l }, "line 2 (seq 3): prev"},
		{"a line copied", func(l []string) []string { return append(l[:3:3], l[2:]...) }, "line 4 (seq 3): prev"},
		{"a line that is not a record", func(l []string) []string { return append(l[:2:2], append([]string{"hello\n"}, l[2:]...)...) }, "line 3: not a sealed record"},
		{"a record with a field added", func(l []string) []string {
			l[0] = strings.Replace(l[0], `{"seq":1,`, `{"seq":1,"x":1,`, 1)
			return l
		}, "line 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mutated := tc.mutate(append([]string(nil), orig...))
			_, err := Verify(strings.NewReader(strings.Join(mutated, "")))
			assert.ErrorContains(t, err, tc.want)
		})
	}
	_, err := Verify(strings.NewReader(strings.Join(orig, "")))
	assert.NoError(t, err)
}

// TestTornLastLine: a write cut short by a crash does not stop the server
// from starting again; the next record says so, and the chain still holds.
func TestTornLastLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	write(t, path, 2)
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	require.NoError(t, err)
	frag := `{"seq":3,"time":"2026-12-04T`
	_, err = f.WriteString(frag)
	require.NoError(t, err)
	require.NoError(t, f.Close())
	s, err := verify(t, path)
	require.NoError(t, err)
	assert.Equal(t, len(frag), s.TornTail)
	assert.Equal(t, 2, s.Records)

	write(t, path, 1)
	s, err = verify(t, path)
	require.NoError(t, err)
	assert.Equal(t, 3, s.Records)
	assert.Zero(t, s.TornTail)
	assert.Contains(t, lines(t, path)[3], fmt.Sprintf(`"after_torn":%d`, len(frag)))

	// A damaged line in the middle, with no record owning up to it, is not
	// a torn write.
	ls := lines(t, path)
	ls[3] = strings.Replace(ls[3], fmt.Sprintf(`"after_torn":%d`, len(frag)), `"after_torn":1`, 1)
	_, err = Verify(strings.NewReader(strings.Join(ls, "")))
	assert.ErrorContains(t, err, "line 3")
}

func TestOpenRefusesABrokenLog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	require.NoError(t, os.WriteFile(path, []byte("not a record\n{}\n"), 0o600))
	_, err := Open(path)
	assert.ErrorContains(t, err, "line 1")
	assert.ErrorContains(t, err, "move it aside")
}

func TestConcurrentAppends(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	l, err := Open(path)
	require.NoError(t, err)
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				l.Go(func() { assert.NoError(t, l.Append(Record{Method: fmt.Sprint("/m/", g), Code: "OK"})) })
			}
		}()
	}
	wg.Wait()
	require.NoError(t, l.Close())
	s, err := verify(t, path)
	require.NoError(t, err)
	assert.Equal(t, 400, s.Records)
}

// FuzzVerify: an audit file from disk never panics the verifier, and a
// file it accepts has as many records as sealed lines.
func FuzzVerify(f *testing.F) {
	var buf bytes.Buffer
	path := filepath.Join(f.TempDir(), "seed.jsonl")
	l, err := Open(path)
	if err != nil {
		f.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		_ = l.Append(Record{Method: "/m", Code: "OK", AfterTorn: 0})
	}
	_ = l.Close()
	b, _ := os.ReadFile(path)
	buf.Write(b)
	f.Add(buf.Bytes())
	f.Add([]byte("{}\n"))
	f.Add([]byte(`{"seq":1,"hash":"` + strings.Repeat("0", 64) + `"}` + "\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := Verify(bytes.NewReader(data))
		if err != nil {
			return
		}
		assert.LessOrEqual(t, s.Records, bytes.Count(data, []byte("\n")))
	})
}

// TestVerifyReadsLineByLine: a file with no line breaks is refused at its
// first MiB rather than read into memory whole.
func TestVerifyReadsLineByLine(t *testing.T) {
	_, err := Verify(bytes.NewReader(bytes.Repeat([]byte("x"), 3<<20)))
	assert.ErrorContains(t, err, "line 1: longer than 1048576 bytes")
	s, err := Verify(strings.NewReader(""))
	require.NoError(t, err)
	assert.Zero(t, s.Records)
}
