//! `synwatch run` refuses clearly what it cannot do: an unknown interface, or capture
//! without CAP_NET_RAW (one line saying how to grant it, exit 2).

#[expect(
    dead_code,
    reason = "this test uses only the root check of the shared lab module"
)]
mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::require_root;

#[test]
fn an_unknown_interface_is_a_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_synwatch"))
        .args(["run", "--iface", "no-such-if0"])
        .output()
        .expect("run synwatch");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("invalid --iface 'no-such-if0': no such interface (this host has: "),
        "{stderr}"
    );
    assert!(stderr.contains("lo"), "{stderr}");
}

#[test]
#[ignore = "needs root to become an unprivileged user; make test runs it"]
fn without_cap_net_raw_it_says_how_to_grant_it() {
    require_root();
    // A copy the unprivileged user can execute.
    let dir = std::env::temp_dir().join(format!("synwatch-noprivs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod dir");
    let bin = dir.join("synwatch");
    std::fs::copy(env!("CARGO_BIN_EXE_synwatch"), &bin).expect("copy binary");
    let out = Command::new("runuser")
        .args(["-u", "nobody", "--"])
        .arg(&bin)
        .args(["run", "--iface", "lo"])
        .output()
        .expect("runuser (util-linux)");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    for want in [
        "not allowed to capture on lo",
        "CAP_NET_RAW",
        "setcap",
        "--cap-add NET_RAW",
    ] {
        assert!(stderr.contains(want), "lacks {want}: {stderr}");
    }
}
