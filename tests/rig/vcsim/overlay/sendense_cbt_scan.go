package simulator

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"syscall"
)

// blockMap is a disk's contents at one moment, one entry per CBT block:
// a digest to tell changed blocks from unchanged ones, and whether the
// block holds anything but zeros ("allocated" for changeId "*").
type blockMap struct {
	capacity int64
	digests  [][sha256.Size]byte
	nonzero  []bool
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
		digests:  make([][sha256.Size]byte, n),
		nonzero:  make([]bool, n),
	}
	zeros := make([]byte, blockSize)
	zero := sha256.Sum256(zeros)
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
		copy(buf, zeros)
		k, err := file.ReadAt(buf, off)
		if err != nil && err != io.EOF {
			return nil, err
		}
		if limit := f.capacity - off; int64(k) > limit {
			copy(buf[limit:], zeros) // the file is longer than the disk
		}
		m.digests[i] = sha256.Sum256(buf)
		m.nonzero[i] = !bytes.Equal(buf, zeros)
	}
	return m, nil
}
