package calendar

import "testing"

func TestSameLogin(t *testing.T) {
	for _, tc := range []struct {
		practice, directory string
		want                bool
	}{
		{"mmustermann", `KANZLEI\mmustermann`, true},
		{"MMustermann", `kanzlei\mmustermann`, true},
		{"mmustermann@kanzlei.example", `KANZLEI\MMustermann`, true},
		{`KANZLEI\mmustermann`, "mmustermann@kanzlei.example", true},
		{"smaier", `KANZLEI\maier`, false},
		{"", `KANZLEI\maier`, false},
		{"maier", "", false},
		{"maier", `KANZLEI\`, false},
	} {
		if got := SameLogin(tc.practice, tc.directory); got != tc.want {
			t.Errorf("SameLogin(%q, %q) = %v, want %v", tc.practice, tc.directory, got, tc.want)
		}
	}
}

func TestDecide(t *testing.T) {
	same := User{ID: "u", PracticeUsername: "huber", DirectoryUsername: `K\huber`}
	differ := User{ID: "u", PracticeUsername: "smaier", DirectoryUsername: `K\maier`}
	on, off := TenantSettings{LiveSync: true}, TenantSettings{}
	for _, tc := range []struct {
		name string
		ts   TenantSettings
		us   UserSettings
		u    User
		want Decision
	}{
		{"eligible by default", on, UserSettings{}, same, Decision{Applicable, ModeLiveAgent, TargetAgent}},
		{"usernames differ", on, UserSettings{}, differ, Decision{NotApplicable, ModeOff, TargetNone}},
		{"usernames differ, tenant off: still not applicable", off, UserSettings{}, differ, Decision{NotApplicable, ModeOff, TargetNone}},
		{"tenant off", off, UserSettings{}, same, Decision{TenantDisabled, ModeOff, TargetNone}},
		{"user off", on, UserSettings{Mode: ModeOff}, same, Decision{UserOff, ModeOff, TargetNone}},
		{"server push ignores usernames and the switch", off, UserSettings{Mode: ModeServerPush}, differ, Decision{Applicable, ModeServerPush, TargetCalDAV}},
	} {
		if got := Decide(tc.ts, tc.us, tc.u); got != tc.want {
			t.Errorf("%s: Decide = %+v, want %+v", tc.name, got, tc.want)
		}
	}
}
