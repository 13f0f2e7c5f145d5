//! A tgtd of the test's own (Debian package tgt), the independent iSCSI target
//! the initiator and the conductor's iSCSI deploy are checked against: in the
//! foreground on a free loopback port with its own control port, killed and
//! reaped on drop (SIGKILL: tgtd ignores SIGTERM while it has targets).

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Tgtd {
    child: Child,
    control: u16,
    pub portal: SocketAddr,
}

impl Tgtd {
    pub fn start() -> Tgtd {
        for program in ["tgtd", "tgtadm"] {
            let found = Command::new(program).arg("--help").output().is_ok();
            assert!(
                found,
                "{program} is missing: install the Debian package tgt"
            );
        }
        let portal = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .unwrap();
        // Control ports are abstract unix sockets below 32768; the portal's
        // port is unique, so is this.
        let control = 1000 + portal.port() % 30000;
        let child = Command::new("tgtd")
            .args(["-f", "--iscsi", &format!("portal={portal}")])
            .args(["--control-port", &control.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tgtd (package tgt)");
        let tgtd = Tgtd {
            child,
            control,
            portal,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !tgtd.try_adm(&["--mode", "target", "--op", "show"]) {
            assert!(
                Instant::now() < deadline,
                "tgtd did not come up on {portal}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        tgtd
    }

    fn tgtadm(&self) -> Command {
        let mut command = Command::new("tgtadm");
        command.args(["-C", &self.control.to_string(), "--lld", "iscsi"]);
        command
    }

    /// Runs tgtadm; whether it succeeded (for removals that may find nothing).
    pub fn try_adm(&self, args: &[&str]) -> bool {
        self.tgtadm()
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    }

    /// Runs tgtadm; fails the test with its message if it fails.
    pub fn adm(&self, args: &[&str]) {
        let out = self
            .tgtadm()
            .args(args)
            .output()
            .expect("tgtadm (package tgt)");
        assert!(
            out.status.success(),
            "tgtadm {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A CHAP account (tgt's accounts belong to the daemon, not to a target).
    pub fn add_account(&self, user: &str, secret: &str) {
        self.adm(&[
            "--mode",
            "account",
            "--op",
            "new",
            "--user",
            user,
            "--password",
            secret,
        ]);
    }

    /// Target `tid` named `iqn` with LUN 1 backed by `file`, open to every
    /// initiator that proves account `user`'s secret; with `mutual_user`, the
    /// target proves that account's secret back.
    pub fn add_target(
        &self,
        tid: u32,
        iqn: &str,
        file: &Path,
        user: &str,
        mutual_user: Option<&str>,
    ) {
        let tid = tid.to_string();
        self.adm(&["--mode", "target", "--op", "new", "--tid", &tid, "-T", iqn]);
        self.adm(&[
            "--mode",
            "logicalunit",
            "--op",
            "new",
            "--tid",
            &tid,
            "--lun",
            "1",
            "--backing-store",
            file.to_str().unwrap(),
            "--bstype",
            "rdwr",
        ]);
        self.adm(&[
            "--mode", "account", "--op", "bind", "--tid", &tid, "--user", user,
        ]);
        if let Some(mutual) = mutual_user {
            self.adm(&[
                "--mode",
                "account",
                "--op",
                "bind",
                "--tid",
                &tid,
                "--user",
                mutual,
                "--outgoing",
            ]);
        }
        self.adm(&[
            "--mode", "target", "--op", "bind", "--tid", &tid, "-I", "ALL",
        ]);
    }
}

impl Drop for Tgtd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
