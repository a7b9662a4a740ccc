package simulator

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"
)

// Guest writes, journaled. A scan digests every written block of a disk
// (sendense_cbt_scan.go): a noticeable part of a second per GiB, where real
// CBT costs a snapshot nothing. The rig's guest-write helper
// (tests/rig/vmware_vms.py, fill) appends one line per call to
// "<flat file>.sendense-journal":
//
//	<mtime_ns before> <mtime_ns after> <size after> <start>+<length>,...
//
// and sets the file's mtime to that "after" value, a second in the past. Any
// later write by anything else moves the mtime to the present, so it can
// never pass for a journaled one, even within one tick of the coarse clock
// file times come from.
//
// A snapshot derives a disk's block map from the disk's previous one,
// re-digesting only the journaled ranges, when the journal provably accounts
// for every change since: the lines appended since the previous map chain
// from the mtime that map was taken at, each from the one before, and the
// last one left the mtime and size the file has now. Anything else (an
// unjournaled write, a torn line, a journal that shrank, another file, no
// previous map) means a full scan.
//
// File times come from a clock that ticks every few milliseconds, and a
// write in the tick the mtime already shows leaves it as it is. So a state
// is a base for the journal only if it was read more than settleTime after
// its mtime: every later write then moves the mtime. A journaled write's
// mtime is a second old, so this only ever sends a disk written around a
// snapshot by something else to a scan.

const (
	journalSuffix = ".sendense-journal"
	settleTime    = 100 * time.Millisecond // far above any clock tick
)

// fileState is a flat file as a block map was taken from it.
type fileState struct {
	path       string
	mtimeNs    int64
	size       int64
	journalEnd int64 // journal bytes accounted for
	known      bool  // false: the file could not be stat'ed
	settled    bool  // read more than settleTime after its mtime
}

// currentState reads the journal's length before the file's mtime: a helper
// appending in between leaves a line whose "before" is not the recorded
// mtime, so the next snapshot scans instead of trusting the journal.
func currentState(f *flatDisk) fileState {
	s := fileState{path: f.path}
	if st, err := os.Stat(f.path + journalSuffix); err == nil {
		s.journalEnd = st.Size()
	}
	before := time.Now()
	st, err := os.Stat(f.path)
	if err != nil {
		return s
	}
	s.mtimeNs, s.size, s.known = st.ModTime().UnixNano(), st.Size(), true
	s.settled = before.Sub(st.ModTime()) > settleTime
	return s
}

type journalEntry struct {
	before, after, size int64
	ranges              [][2]int64 // start, length
}

// fromJournal is the disk's block map now, from prev (taken when the file was
// in state was) and the journal; an error says why the journal cannot be
// trusted, and the caller scans instead.
func fromJournal(f *flatDisk, prev *blockMap, was, now fileState, blockSize int64) (*blockMap, error) {
	switch {
	case !was.known || !now.known:
		return nil, errors.New("file state unknown")
	case !was.settled:
		return nil, errors.New("written within a clock tick of the previous snapshot")
	case was.path != now.path || prev.capacity != f.capacity:
		return nil, errors.New("another file or capacity")
	case now.journalEnd < was.journalEnd:
		return nil, errors.New("the journal shrank")
	}
	var ranges [][2]int64
	mtime, size := was.mtimeNs, was.size
	if now.journalEnd > was.journalEnd {
		entries, err := readJournal(f.path+journalSuffix, was.journalEnd, now.journalEnd)
		if err != nil {
			return nil, err
		}
		for _, e := range entries {
			if e.before != mtime {
				return nil, fmt.Errorf("a write the journal does not hold (mtime %d, journal %d)", mtime, e.before)
			}
			mtime, size = e.after, e.size
			ranges = append(ranges, e.ranges...)
		}
	}
	if mtime != now.mtimeNs || size != now.size {
		return nil, fmt.Errorf("a write the journal does not hold (mtime %d, journal %d)", now.mtimeNs, mtime)
	}
	if len(ranges) == 0 {
		return prev, nil // block maps are never modified once recorded
	}
	m := &blockMap{
		capacity: prev.capacity,
		digests:  append([]uint64(nil), prev.digests...),
		nonzero:  append([]bool(nil), prev.nonzero...),
	}
	file, err := os.Open(f.path)
	if err != nil {
		return nil, err
	}
	defer file.Close()
	n := int64(len(m.digests))
	done := make([]bool, n)
	buf, zeros := make([]byte, blockSize), make([]byte, blockSize)
	for _, r := range ranges {
		for i := r[0] / blockSize; i < n && i*blockSize < r[0]+r[1]; i++ {
			if done[i] {
				continue
			}
			if err := m.digestBlock(file, i, blockSize, buf, zeros); err != nil {
				return nil, err
			}
			done[i] = true
		}
	}
	return m, nil
}

// readJournal parses the journal's bytes [from, to): whole lines only.
func readJournal(path string, from, to int64) ([]journalEntry, error) {
	file, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer file.Close()
	raw := make([]byte, to-from)
	if _, err := io.ReadFull(io.NewSectionReader(file, from, to-from), raw); err != nil {
		return nil, err
	}
	if !bytes.HasSuffix(raw, []byte("\n")) {
		return nil, errors.New("a torn journal line")
	}
	var entries []journalEntry
	for _, line := range strings.Split(strings.TrimSuffix(string(raw), "\n"), "\n") {
		e, err := parseJournalLine(line)
		if err != nil {
			return nil, fmt.Errorf("journal line %q: %w", line, err)
		}
		entries = append(entries, e)
	}
	return entries, nil
}

func parseJournalLine(line string) (journalEntry, error) {
	var e journalEntry
	fields := strings.Fields(line)
	if len(fields) != 3 && len(fields) != 4 {
		return e, errors.New("not 3 or 4 fields")
	}
	nums := make([]int64, 3)
	for i := range nums {
		v, err := strconv.ParseInt(fields[i], 10, 64)
		if err != nil {
			return e, err
		}
		nums[i] = v
	}
	e.before, e.after, e.size = nums[0], nums[1], nums[2]
	if len(fields) == 3 {
		return e, nil
	}
	for _, r := range strings.Split(fields[3], ",") {
		start, length, ok := strings.Cut(r, "+")
		if !ok {
			return e, errors.New("a range is not start+length")
		}
		s, err1 := strconv.ParseInt(start, 10, 64)
		l, err2 := strconv.ParseInt(length, 10, 64)
		if err1 != nil || err2 != nil || s < 0 || l < 0 {
			return e, errors.New("a bad range")
		}
		e.ranges = append(e.ranges, [2]int64{s, l})
	}
	return e, nil
}
