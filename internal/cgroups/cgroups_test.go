package cgroups

import (
	"reflect"
	"strings"
	"testing"
)

// Recorded from the project's build machine (hybrid v1 + empty unified).
const hybridMountinfo = `24 1 253:0 / / rw,relatime - ext4 /dev/vda rw
30 24 0:26 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
32 30 0:28 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
33 30 0:29 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
34 30 0:30 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
35 30 0:31 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
`

const v2Mountinfo = `24 1 253:0 / / rw,relatime - ext4 /dev/vda rw
30 24 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
`

const mergedMountinfo = `31 30 0:27 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
`

func TestParseMountinfo(t *testing.T) {
	tests := []struct {
		name, in string
		want     Layout
	}{
		{"hybrid", hybridMountinfo, Layout{Kind: "hybrid", V2: "/sys/fs/cgroup/unified", V1: map[string]string{
			"cpu": "/sys/fs/cgroup/cpu", "cpuacct": "/sys/fs/cgroup/cpuacct", "memory": "/sys/fs/cgroup/memory", "name=systemd": "/sys/fs/cgroup/systemd"}}},
		{"v2", v2Mountinfo, Layout{Kind: "v2", V2: "/sys/fs/cgroup", V1: map[string]string{}}},
		{"merged", mergedMountinfo, Layout{Kind: "v1", V1: map[string]string{"cpu,cpuacct": "/sys/fs/cgroup/cpu,cpuacct"}}},
		{"none", "24 1 253:0 / / rw - ext4 /dev/vda rw\n", Layout{Kind: "none", V1: map[string]string{}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseMountinfo(strings.NewReader(tt.in))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(*got, tt.want) {
				t.Errorf("got %+v\nwant %+v", *got, tt.want)
			}
		})
	}
}

func TestParseProcCgroup(t *testing.T) {
	in := "9:name=systemd:/user/1000.user/c2.session\n4:memory:/process_api/x\n1:cpu,cpuacct:/\n0::/user.slice/session-2.scope\n"
	got, err := ParseProcCgroup(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	want := []Set{
		{"9", "name=systemd", "/user/1000.user/c2.session"},
		{"4", "memory", "/process_api/x"},
		{"1", "cpu,cpuacct", "/"},
		{"0", "", "/user.slice/session-2.scope"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v", got)
	}
	if _, err := ParseProcCgroup(strings.NewReader("garbage\n")); err == nil {
		t.Error("no error on a malformed line")
	}
}
