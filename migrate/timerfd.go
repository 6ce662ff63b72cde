package migrate

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/checkpoint-restore/go-criu/v7/crit/images/fdinfo"

	"github.com/phaul/phaul/internal/criuimg"
)

// tfdTimerAbstime is TFD_TIMER_ABSTIME, of a timerfd's settime_flags.
const tfdTimerAbstime = 1

// rearmTimerfds mends, in the images in dir, the periodic timerfds CRIU
// would restore disarmed: one that expired and was not read before the
// dump shows a remaining time of 0 in its fdinfo (the kernel moves it on
// only when read), which CRIU 4.2 writes as it_value 0, and restoring
// that disarms the timer for good. Such a timer is due again one interval
// after the restore; its counted expirations (ticks) are kept. It returns
// how many it mended.
func rearmTimerfds(dir string) (int, error) {
	path := filepath.Join(dir, "files.img")
	img, err := criuimg.Read(path, "FILES", &fdinfo.FileEntry{})
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("timerfds: %w", err)
	}
	n := 0
	for _, e := range img.Entries {
		t := e.Message.(*fdinfo.FileEntry).GetTfd()
		if t == nil || t.GetVsec() != 0 || t.GetVnsec() != 0 || t.GetIsec() == 0 && t.GetInsec() == 0 ||
			t.GetSettimeFlags()&tfdTimerAbstime != 0 {
			continue
		}
		isec, insec := t.GetIsec(), t.GetInsec()
		t.Vsec, t.Vnsec = &isec, &insec
		n++
	}
	if n == 0 {
		return 0, nil
	}
	if err := criuimg.Write(path, img); err != nil {
		return 0, fmt.Errorf("timerfds: %w", err)
	}
	return n, nil
}
