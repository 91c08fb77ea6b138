//! The Debian package and its systemd unit, as an administrator meets them: the amd64
//! package is built with cargo-deb from this test's own `headwater` binary (stripped,
//! no release build), its fields and files are read with `dpkg-deb`, and it is
//! installed, installed again and purged with `dpkg --root` in a scratch root, where its
//! maintainer scripts make the `headwater` user in `gpio` and `dialout` (DPKG_ROOT keeps
//! them out of this machine's own /etc). The unit is checked with `systemd-analyze`.
//!
//! Needs cargo-deb, dpkg and systemd-analyze (package `systemd`); ./test.sh installs them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

fn run(command: &mut Command) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?} ({e}); ./test.sh installs it"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn stdout(command: &mut Command) -> String {
    String::from_utf8(run(command).stdout).expect("text output")
}

/// Builds the package into `dir` from the test's debug binary, as `deploy/cross-build.sh`
/// does from the release one (`cargo deb --no-build`), and returns its path.
fn build_package(dir: &Path) -> PathBuf {
    let target_dir = dir.join("target");
    std::fs::create_dir_all(target_dir.join("release")).unwrap();
    std::fs::copy(
        env!("CARGO_BIN_EXE_headwater"),
        target_dir.join("release/headwater"),
    )
    .unwrap();
    let out = dir.join("out");
    let built = stdout(
        Command::new(env!("CARGO"))
            .args(["deb", "--locked", "--no-build", "--strip", "--fast"])
            .arg("--manifest-path")
            .arg(Path::new(MANIFEST_DIR).join("Cargo.toml"))
            .arg("-o")
            .arg(&out)
            .env("CARGO_TARGET_DIR", &target_dir),
    );
    let path = PathBuf::from(built.lines().last().expect("cargo deb prints the package"));
    assert!(path.is_file(), "{path:?}");
    path
}

/// An empty root that dpkg can install into: its database and the two account files
/// the maintainer scripts edit.
fn scratch_root(dir: &Path) -> PathBuf {
    let root = dir.join("root");
    for sub in ["var/lib/dpkg/info", "var/lib/dpkg/updates", "etc"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    std::fs::write(root.join("var/lib/dpkg/available"), "").unwrap();
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\ndialout:x:20:\n").unwrap();
    root
}

/// `dpkg --root=ROOT` running the maintainer scripts here, with DPKG_ROOT set for them;
/// the package's dependencies (libc6, passwd) are this machine's, not the root's.
fn dpkg(root: &Path) -> Command {
    let mut command = Command::new("dpkg");
    command
        .arg(format!("--root={}", root.display()))
        .args(["--force-script-chrootless", "--force-depends"]);
    command
}

fn lines_starting<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.starts_with(prefix)).collect()
}

#[test]
fn the_amd64_package_installs_upgrades_and_purges_in_a_scratch_root() {
    let dir = tempfile::tempdir().unwrap();
    let deb = build_package(dir.path());

    // The control fields.
    let field = |name: &str| stdout(Command::new("dpkg-deb").arg("-f").arg(&deb).arg(name));
    assert_eq!(field("Package").trim(), "headwater");
    if cfg!(target_arch = "x86_64") {
        assert_eq!(field("Architecture").trim(), "amd64");
    }
    let depends = field("Depends");
    assert!(depends.contains("libc6 (>="), "{depends}");
    assert!(
        depends.contains("passwd"),
        "useradd comes from passwd: {depends}"
    );
    let conffiles = stdout(
        Command::new("dpkg-deb")
            .arg("-I")
            .arg(&deb)
            .arg("conffiles"),
    );
    assert_eq!(
        conffiles.lines().collect::<Vec<_>>(),
        [
            "/etc/headwater/headwater.yaml",
            "/etc/headwater/flows/example.yaml"
        ]
    );

    // The files, their modes and owners.
    let listing = stdout(Command::new("dpkg-deb").arg("-c").arg(&deb));
    let entry = |path: &str| {
        listing
            .lines()
            .find(|l| l.ends_with(&format!(" ./{path}")))
            .unwrap_or_else(|| panic!("{path} is not in the package:\n{listing}"))
            .to_string()
    };
    assert!(entry("usr/bin/headwater").starts_with("-rwxr-xr-x 0/0"));
    for file in [
        "etc/headwater/headwater.yaml",
        "etc/headwater/flows/example.yaml",
        "usr/lib/systemd/system/headwater.service",
        "usr/share/doc/headwater/raspberry-pi.md",
        "usr/share/doc/headwater/flow.schema.json",
    ] {
        assert!(entry(file).starts_with("-rw-r--r-- 0/0"), "{}", entry(file));
    }

    // Install into the scratch root.
    let host_passwd_before = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let root = scratch_root(dir.path());
    run(dpkg(&root).arg("-i").arg(&deb));
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
    let user = lines_starting(&passwd, "headwater:");
    assert_eq!(user.len(), 1, "{passwd}");
    let fields: Vec<&str> = user[0].split(':').collect();
    assert_eq!(fields[5], "/var/lib/headwater", "home: {}", user[0]);
    assert_eq!(fields[6], "/usr/sbin/nologin", "shell: {}", user[0]);
    let uid: u32 = fields[2].parse().unwrap();
    assert!((1..1000).contains(&uid), "a system user: {}", user[0]);
    let group = std::fs::read_to_string(root.join("etc/group")).unwrap();
    for name in ["gpio", "dialout"] {
        let line = lines_starting(&group, &format!("{name}:"));
        assert_eq!(line.len(), 1, "{group}");
        let members = line[0].rsplit(':').next().unwrap();
        assert!(members.split(',').any(|m| m == "headwater"), "{}", line[0]);
    }
    // dialout existed (gid 20 as on Debian) and was kept; gpio was made.
    assert!(group.contains("dialout:x:20:"), "{group}");
    assert!(
        root.join("etc/systemd/system/multi-user.target.wants/headwater.service")
            .symlink_metadata()
            .is_ok(),
        "the service is enabled in the root"
    );
    assert_eq!(
        std::fs::read_to_string("/etc/passwd").unwrap_or_default(),
        host_passwd_before,
        "the maintainer scripts changed this machine's accounts"
    );

    // The installed binary reads the installed configuration.
    let check = stdout(
        Command::new(root.join("usr/bin/headwater"))
            .arg("check")
            .arg(root.join("etc/headwater/headwater.yaml"))
            .arg(root.join("etc/headwater/flows/example.yaml")),
    );
    assert!(check.starts_with("ok:"), "{check}");

    // Installing again (an upgrade to the same version) keeps one user.
    run(dpkg(&root).arg("-i").arg(&deb));
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
    assert_eq!(lines_starting(&passwd, "headwater:").len(), 1, "{passwd}");

    // Purge removes the program and the data, keeps the user.
    std::fs::create_dir_all(root.join("var/lib/headwater")).unwrap();
    std::fs::write(root.join("var/lib/headwater/store.redb"), "data").unwrap();
    run(dpkg(&root).args(["--purge", "headwater"]));
    assert!(!root.join("usr/bin/headwater").exists());
    assert!(!root.join("etc/headwater/headwater.yaml").exists());
    assert!(!root.join("var/lib/headwater").exists());
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
    assert_eq!(lines_starting(&passwd, "headwater:").len(), 1, "{passwd}");
}

fn unit_path() -> PathBuf {
    Path::new(MANIFEST_DIR).join("deploy/headwater.service")
}

#[test]
fn the_unit_is_hardened_and_systemd_accepts_it() {
    let unit = std::fs::read_to_string(unit_path()).unwrap();
    let settings: Vec<&str> = unit
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for wanted in [
        "Type=notify",
        "WatchdogSec=30s",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "User=headwater",
        "StateDirectory=headwater",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "PrivateDevices=no",
    ] {
        assert!(settings.contains(&wanted), "the unit lacks {wanted}");
    }
    // What would break Headwater on a Pi (see the unit's comments).
    for unwanted in [
        "MemoryDenyWriteExecute=",
        "SystemCallArchitectures=",
        "PrivateUsers=",
        "DeviceAllow=",
        "ProtectClock=",
    ] {
        assert!(
            !settings.iter().any(|l| l.starts_with(unwanted)),
            "the unit sets {unwanted}"
        );
    }
    // One capability in each set, nothing else.
    let capabilities: Vec<&&str> = settings
        .iter()
        .filter(|l| {
            l.starts_with("CapabilityBoundingSet=") || l.starts_with("AmbientCapabilities=")
        })
        .collect();
    assert_eq!(capabilities.len(), 2, "{capabilities:?}");

    let verify = run(Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(unit_path()));
    let complaints = String::from_utf8_lossy(&verify.stderr);
    assert!(
        complaints.trim().is_empty(),
        "systemd-analyze verify: {complaints}"
    );

    // systemd's own exposure score (0 = locked down, 10 = exposed); 2.3 when written.
    let security = stdout(
        Command::new("systemd-analyze")
            .args(["security", "--offline=yes", "--no-pager"])
            .arg(unit_path()),
    );
    let overall = security
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for headwater.service: ")
                .nth(1)
        })
        .unwrap_or_else(|| panic!("no overall exposure level in:\n{security}"));
    let score: f64 = overall.split_whitespace().next().unwrap().parse().unwrap();
    assert!(score <= 3.0, "exposure {overall}:\n{security}");
}

#[test]
fn the_release_workflow_builds_the_scripts_targets_with_the_script() {
    let script =
        std::fs::read_to_string(Path::new(MANIFEST_DIR).join("deploy/cross-build.sh")).unwrap();
    let line = script
        .lines()
        .find_map(|l| l.strip_prefix("all_targets=("))
        .expect("all_targets=(...) in deploy/cross-build.sh");
    let script_targets: Vec<&str> = line.trim_end_matches(')').split_whitespace().collect();
    assert_eq!(script_targets.len(), 3);

    let workflow =
        std::fs::read_to_string(Path::new(MANIFEST_DIR).join(".github/workflows/release.yml"))
            .unwrap();
    let matrix: Vec<&str> = workflow
        .lines()
        .skip_while(|l| l.trim() != "target:")
        .skip(1)
        .map_while(|l| l.trim().strip_prefix("- "))
        .collect();
    assert_eq!(matrix, script_targets, "the workflow's matrix");
    assert!(
        workflow.contains("run: deploy/cross-build.sh ${{ matrix.target }}"),
        "the workflow builds with the script"
    );
}
