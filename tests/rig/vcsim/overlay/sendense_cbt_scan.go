package simulator

import (
	"bytes"
	"errors"
	"hash/maphash"
	"io"
	"os"
	"syscall"
)

// blockMap is a disk's contents at one moment, one entry per CBT block:
// a digest to tell changed blocks from unchanged ones, and whether the
// block holds anything but zeros ("allocated" for changeId "*").
type blockMap struct {
	capacity int64
	digests  []uint64
	nonzero  []bool
}

// digestSeed is fixed for the process: digests only ever meet digests of the
// same vcsim run. maphash (AES-accelerated) rather than SHA-256: a scan hashes
// every written block, and SHA-256 made a snapshot of a few GiB take seconds,
// which real CBT never costs (see also the write journal, sendense_cbt_journal.go).
var digestSeed = maphash.MakeSeed()

func digest(b []byte) uint64 {
	var h maphash.Hash
	h.SetSeed(digestSeed)
	_, _ = h.Write(b)
	return h.Sum64()
}

// seekData is lseek(2)'s SEEK_DATA on Linux: it skips holes of sparse
// files, so scanning a mostly empty disk reads only what was written.
const seekData = 3

// scanDisk digests every block of the disk's data file.
func scanDisk(f *flatDisk, blockSize int64) (*blockMap, error) {
	return scanBlocks(f, blockSize, 0, f.capacity)
}

// scanBlocks digests the blocks of the disk's data file that overlap
// [from, to); the others keep the digest of zeros. Bytes past the end of the
// file (or past the capacity) count as zeros, as they read in a guest.
func scanBlocks(f *flatDisk, blockSize, from, to int64) (*blockMap, error) {
	n := (f.capacity + blockSize - 1) / blockSize
	last := (to + blockSize - 1) / blockSize
	if last > n {
		last = n
	}
	m := &blockMap{
		capacity: f.capacity,
		digests:  make([]uint64, n),
		nonzero:  make([]bool, n),
	}
	zeros := make([]byte, blockSize)
	zero := digest(zeros)
	for i := range m.digests {
		m.digests[i] = zero
	}
	file, err := os.Open(f.path)
	if errors.Is(err, os.ErrNotExist) {
		return m, nil
	}
	if err != nil {
		return nil, err
	}
	defer file.Close()

	buf := make([]byte, blockSize)
	for i := from / blockSize; i < last; i++ {
		off := i * blockSize
		data, err := file.Seek(off, seekData)
		switch {
		case errors.Is(err, syscall.ENXIO):
			return m, nil // nothing but holes from here on
		case err != nil:
			data = off // no SEEK_DATA here: read everything
		}
		if data >= off+blockSize {
			i = data/blockSize - 1 // blocks up to data's block are holes
			continue
		}
		if err := m.digestBlock(file, i, blockSize, buf, zeros); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// digestBlock reads block i of the data file into the map; buf and zeros are
// blockSize long, zeros all zero.
func (m *blockMap) digestBlock(file *os.File, i, blockSize int64, buf, zeros []byte) error {
	off := i * blockSize
	copy(buf, zeros)
	k, err := file.ReadAt(buf, off)
	if err != nil && err != io.EOF {
		return err
	}
	if limit := m.capacity - off; int64(k) > limit {
		copy(buf[limit:], zeros) // the file is longer than the disk
	}
	m.digests[i] = digest(buf)
	m.nonzero[i] = !bytes.Equal(buf, zeros)
	return nil
}
