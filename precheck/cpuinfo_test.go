package precheck

import (
	"encoding/binary"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
)

// cpuinfoImg builds a cpuinfo.img as CRIU writes it.
func cpuinfoImg(model string, mask uint64, size, max uint32) []byte {
	var x86 []byte
	x86 = protowire.AppendTag(x86, 1, protowire.VarintType)
	x86 = protowire.AppendVarint(x86, 2)
	x86 = protowire.AppendTag(x86, 6, protowire.VarintType)
	x86 = protowire.AppendVarint(x86, 0xbfebfbff)
	x86 = protowire.AppendTag(x86, 7, protowire.BytesType)
	x86 = protowire.AppendString(x86, model)
	x86 = protowire.AppendTag(x86, 8, protowire.VarintType)
	x86 = protowire.AppendVarint(x86, mask)
	x86 = protowire.AppendTag(x86, 9, protowire.VarintType)
	x86 = protowire.AppendVarint(x86, uint64(size))
	x86 = protowire.AppendTag(x86, 10, protowire.VarintType)
	x86 = protowire.AppendVarint(x86, uint64(max))
	var entry []byte
	entry = protowire.AppendTag(entry, 1, protowire.BytesType)
	entry = protowire.AppendBytes(entry, x86)
	img := []byte{0x19, 0x43, 0x56, 0x54, 0x13, 0x40, 0x40, 0x61}
	img = binary.LittleEndian.AppendUint32(img, uint32(len(entry)))
	return append(img, entry...)
}

func TestParseCPUInfoImg(t *testing.T) {
	ci, err := ParseCPUInfoImg(cpuinfoImg("AMD EPYC", 0x2e7, 2696, 2696))
	if err != nil {
		t.Fatal(err)
	}
	if ci.ModelID != "AMD EPYC" || ci.XFeatures != 0x2e7 || ci.XSaveSize != 2696 || ci.XSaveSizeMax != 2696 {
		t.Errorf("got %+v", ci)
	}
	if got := XFeatureNames(0x2e7); got != "x87 sse avx avx512-opmask avx512-zmm-hi256 avx512-hi16-zmm pkru" {
		t.Errorf("names: %s", got)
	}
	for _, bad := range [][]byte{nil, make([]byte, 11), append(make([]byte, 8), 0xff, 0xff, 0, 0)} {
		if _, err := ParseCPUInfoImg(bad); err == nil {
			t.Errorf("accepted %x", bad)
		}
	}
}

// FuzzCPUInfoImg: the source's cpuinfo.img arrives from the network.
func FuzzCPUInfoImg(f *testing.F) {
	f.Add(cpuinfoImg("x", 7, 832, 832))
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, b []byte) {
		ParseCPUInfoImg(b)
	})
}
