package precheck

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"

	"google.golang.org/protobuf/encoding/protowire"
)

// CPUInfo is what CRIU's cpuinfo.img says of an x86 CPU (images/cpuinfo.proto:
// cpuinfo_entry.x86_entry).
type CPUInfo struct {
	ModelID      string
	XFeatures    uint64 // XSAVE feature mask
	XSaveSize    uint32 // bytes of the XSAVE area in use
	XSaveSizeMax uint32
}

var errCPUInfo = errors.New("bad cpuinfo image")

// ParseCPUInfoImg decodes the first x86 entry of a cpuinfo.img: two magic
// words, then a 4-byte little-endian length and a cpuinfo_entry message.
func ParseCPUInfoImg(b []byte) (*CPUInfo, error) {
	if len(b) < 12 {
		return nil, fmt.Errorf("%w: %d bytes", errCPUInfo, len(b))
	}
	n := binary.LittleEndian.Uint32(b[8:12])
	if uint64(n) > uint64(len(b)-12) {
		return nil, fmt.Errorf("%w: entry of %d bytes in %d", errCPUInfo, n, len(b)-12)
	}
	entry := b[12 : 12+n]
	for len(entry) > 0 {
		num, typ, l := protowire.ConsumeTag(entry)
		if l < 0 {
			return nil, errCPUInfo
		}
		entry = entry[l:]
		if num == 1 && typ == protowire.BytesType {
			x86, l := protowire.ConsumeBytes(entry)
			if l < 0 {
				return nil, errCPUInfo
			}
			return parseX86(x86)
		}
		l = protowire.ConsumeFieldValue(num, typ, entry)
		if l < 0 {
			return nil, errCPUInfo
		}
		entry = entry[l:]
	}
	return nil, fmt.Errorf("%w: no x86 entry", errCPUInfo)
}

func parseX86(b []byte) (*CPUInfo, error) {
	ci := &CPUInfo{}
	for len(b) > 0 {
		num, typ, l := protowire.ConsumeTag(b)
		if l < 0 {
			return nil, errCPUInfo
		}
		b = b[l:]
		switch {
		case num == 7 && typ == protowire.BytesType:
			s, l := protowire.ConsumeString(b)
			if l < 0 {
				return nil, errCPUInfo
			}
			ci.ModelID, b = s, b[l:]
			continue
		case (num == 8 || num == 9 || num == 10) && typ == protowire.VarintType:
			v, l := protowire.ConsumeVarint(b)
			if l < 0 {
				return nil, errCPUInfo
			}
			switch num {
			case 8:
				ci.XFeatures = v
			case 9:
				ci.XSaveSize = uint32(v)
			case 10:
				ci.XSaveSizeMax = uint32(v)
			}
			b = b[l:]
			continue
		}
		l = protowire.ConsumeFieldValue(num, typ, b)
		if l < 0 {
			return nil, errCPUInfo
		}
		b = b[l:]
	}
	return ci, nil
}

// xfeatureNames names the bits of the XSAVE feature mask.
var xfeatureNames = []string{"x87", "sse", "avx", "mpx-bndregs", "mpx-bndcsr", "avx512-opmask", "avx512-zmm-hi256", "avx512-hi16-zmm",
	"pt", "pkru", "pasid", "cet-user", "cet-supervisor", "hdc", "uintr", "lbr", "hwp", "amx-tilecfg", "amx-tiledata"}

// XFeatureNames lists the features of a mask.
func XFeatureNames(mask uint64) string {
	var out []string
	for i := 0; i < 64; i++ {
		if mask&(1<<i) == 0 {
			continue
		}
		if i < len(xfeatureNames) {
			out = append(out, xfeatureNames[i])
		} else {
			out = append(out, fmt.Sprintf("bit%d", i))
		}
	}
	return strings.Join(out, " ")
}
