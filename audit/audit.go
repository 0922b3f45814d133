// Package audit writes the audit log: one JSON line per inference,
// administrative call or refused call, saying who asked which model
// version what (a hash of the input, never the input), what came back and
// how long it took. Each line carries the hash of the line before it, so
// that an edited, removed or reordered line breaks the chain that
// `voxctl audit verify` checks.
//
// A line is the record's JSON with its last field, "hash", the sha256 of
// the line as it would read without that field:
//
//	{"seq":7,...,"prev":"<hash of line 6>","hash":"<sha256 of {"seq":7,...,"prev":"..."}>"}
//
// The chain cannot show that lines were cut from the end; ship the file
// to a collector (or note the last hash elsewhere) to cover that.
package audit

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/voxserve/voxserve/findings"
)

// Record is one line. The server fills what it knows; Seq, Time, Prev and
// the hash are the log's.
type Record struct {
	Seq       uint64 `json:"seq"`
	Time      string `json:"time"`
	Principal string `json:"principal,omitempty"`
	Peer      string `json:"peer,omitempty"`
	Method    string `json:"method"`
	Model     string `json:"model,omitempty"`
	Version   string `json:"version,omitempty"`
	RequestID string `json:"request_id,omitempty"`
	StudyUID  string `json:"study_uid,omitempty"`
	SeriesUID string `json:"series_uid,omitempty"`
	Input     *Input `json:"input,omitempty"`
	Code      string `json:"code"`
	// Error is the status message: it names elements and UIDs, never
	// patient names or IDs.
	Error      string            `json:"error,omitempty"`
	Result     *Result           `json:"result,omitempty"`
	TimingsMs  *findings.Timings `json:"timings_ms,omitempty"`
	DurationMs float64           `json:"duration_ms"`
	// AfterTorn is the length of a torn line just before this one (a
	// write cut short by a crash), which the chain skips.
	AfterTorn int    `json:"after_torn,omitempty"`
	Prev      string `json:"prev"`
}

// Input identifies what was sent without keeping it: SHA256 is the sha256
// of the parts' sha256 digests in the order received (DICOM instances,
// tensors, a volume's data).
type Input struct {
	SHA256 string `json:"sha256,omitempty"`
	Parts  int    `json:"parts"`
	Bytes  int64  `json:"bytes"`
	// Note says why there is no hash (inputs in shared memory).
	Note string `json:"note,omitempty"`
}

// Result is what came back, in the findings document's terms (package
// findings), without masks, tensors or DICOM bytes.
type Result struct {
	Findings     []findings.Finding     `json:"findings,omitempty"`
	Measurements []findings.Measurement `json:"measurements,omitempty"`
	Triage       *findings.Triage       `json:"triage,omitempty"`
	// Outputs names what else was returned (masks, DICOM SR and SEG,
	// tensors by name).
	Outputs []string `json:"outputs,omitempty"`
}

// Log appends records to a file.
type Log struct {
	mu      sync.Mutex
	f       *os.File
	seq     uint64
	prev    string
	torn    int
	pending sync.WaitGroup
}

// Open opens (or creates) the log at path and continues its chain. A torn
// last line (a crash mid-write) is closed off and skipped by the next
// record; any other damage refuses to open, naming the line.
func Open(path string) (*Log, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("audit log: %w", err)
	}
	l := &Log{f: f}
	sum, err := Verify(f)
	if err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("audit log %s: %w; move it aside (voxctl audit verify says more) to start a new one", path, err)
	}
	l.seq, l.prev = sum.LastSeq, sum.LastHash
	if sum.TornTail > 0 {
		if _, err := f.Write([]byte("\n")); err != nil {
			_ = f.Close()
			return nil, fmt.Errorf("audit log: %w", err)
		}
		l.torn = sum.TornTail
	}
	return l, nil
}

// Append writes r as the next line.
func (l *Log) Append(r Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	r.Seq = l.seq + 1
	r.Time = time.Now().UTC().Format("2006-01-02T15:04:05.000Z")
	r.Prev = l.prev
	r.AfterTorn = l.torn
	line, hash, err := seal(r)
	if err != nil {
		return err
	}
	if _, err := l.f.Write(line); err != nil {
		return fmt.Errorf("audit log: %w", err)
	}
	l.seq, l.prev, l.torn = r.Seq, hash, 0
	return nil
}

// Go runs f, which ends in an Append, off the caller's path; Close waits
// for it.
func (l *Log) Go(f func()) {
	l.pending.Add(1)
	go func() {
		defer l.pending.Done()
		f()
	}()
}

// Close waits for records in flight and closes the file.
func (l *Log) Close() error {
	l.pending.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.f.Sync(); err != nil {
		return err
	}
	return l.f.Close()
}

// seal is a record's line and its hash.
func seal(r Record) ([]byte, string, error) {
	body, err := json.Marshal(r)
	if err != nil {
		return nil, "", err
	}
	sum := sha256.Sum256(body)
	hash := hex.EncodeToString(sum[:])
	line := append(body[:len(body)-1:len(body)-1], `,"hash":"`+hash+"\"}\n"...)
	return line, hash, nil
}

// Summary is what Verify found.
type Summary struct {
	Records  int
	LastSeq  uint64
	LastHash string
	First    string // time of the first record
	Last     string
	TornTail int // bytes of an unfinished last line
}

const hashSuffix = len(`,"hash":""}`) + 64

// maxLine caps a line: a record is a few KiB, and a file with no line
// breaks must not be read into memory whole.
const maxLine = 1 << 20

// Verify checks a log's chain from its start: every line's hash, each
// line's prev against the line before, sequence numbers one apart. It
// reads line by line, so a log of any length takes little memory. The
// error names the first bad line.
func Verify(r io.Reader) (Summary, error) {
	var s Summary
	br := bufio.NewReaderSize(r, 64<<10)
	// A line that is not a sealed record may only be a torn write, which
	// the next record owns up to (after_torn); until that record is read,
	// torn holds its length and tornErr what was wrong with it.
	torn := 0
	var tornErr error
	for n := 1; ; n++ {
		line, complete, err := readLine(br)
		if err != nil {
			return s, fmt.Errorf("line %d: %v", n, err)
		}
		if !complete {
			s.TornTail = len(line) // an unfinished last line, or none
			return s, tornErr
		}
		rec, hash, oerr := open(line)
		if oerr != nil {
			if tornErr != nil {
				return s, tornErr
			}
			torn, tornErr = len(line), fmt.Errorf("line %d: %v", n, oerr)
			continue
		}
		switch {
		case tornErr != nil && rec.AfterTorn != torn:
			return s, tornErr
		case tornErr == nil && rec.AfterTorn != 0:
			return s, fmt.Errorf("line %d: says it follows a torn line of %d bytes, and the line before is whole", n, rec.AfterTorn)
		}
		torn, tornErr = 0, nil
		if rec.Prev != s.LastHash {
			return s, fmt.Errorf("line %d (seq %d): prev %.12s… is not the hash of the record before it (%.12s…): a record was removed, reordered or changed", n, rec.Seq, rec.Prev, s.LastHash)
		}
		if rec.Seq != s.LastSeq+1 {
			return s, fmt.Errorf("line %d: seq %d after %d", n, rec.Seq, s.LastSeq)
		}
		if s.Records == 0 {
			s.First = rec.Time
		}
		s.Records++
		s.LastSeq, s.LastHash, s.Last = rec.Seq, hash, rec.Time
	}
}

// readLine reads up to a line break, which it drops; complete is false at
// the end of the input, with what was left.
func readLine(br *bufio.Reader) (line []byte, complete bool, err error) {
	for {
		part, err := br.ReadSlice('\n')
		line = append(line, part...)
		if len(line) > maxLine {
			return nil, false, fmt.Errorf("longer than %d bytes: not a record", maxLine)
		}
		switch err {
		case nil:
			return line[:len(line)-1], true, nil
		case bufio.ErrBufferFull:
			continue
		case io.EOF:
			return line, false, nil
		default:
			return nil, false, err
		}
	}
}

// open checks one line's own hash and decodes it.
func open(line []byte) (Record, string, error) {
	var r Record
	if len(line) < hashSuffix+2 || !bytes.HasPrefix(line[len(line)-hashSuffix:], []byte(`,"hash":"`)) || !bytes.HasSuffix(line, []byte(`"}`)) {
		return r, "", fmt.Errorf("not a sealed record (no trailing \"hash\")")
	}
	hash := string(line[len(line)-hashSuffix+len(`,"hash":"`) : len(line)-2])
	body := append(bytes.Clone(line[:len(line)-hashSuffix]), '}')
	sum := sha256.Sum256(body)
	if hex.EncodeToString(sum[:]) != hash {
		return r, "", fmt.Errorf("its hash does not match its content: the record was changed")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		return r, "", fmt.Errorf("not a record: %v", err)
	}
	return r, hash, nil
}
