//! Starting a script in a PID namespace of its own.
//!
//! kiln clones a small init process into a new PID namespace; that init forks
//! the shell (optionally chrooted), waits for it, reports its status and
//! exits. When the init exits the kernel kills whatever else is left in the
//! namespace, so a daemon a script started (`sleep 1000 &`, a service a
//! package's postinst launched) cannot outlive the phase and keep the tree's
//! mounts busy. The script gets a process group of its own, which kiln kills
//! on an interrupt.
//!
//! Between clone and exec only async-signal-safe system calls run: kiln may
//! have other threads, whose locks (malloc's among them) the child inherits
//! in whatever state they were. Everything the child needs is prepared before.

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// How a script (or a break shell) is to be started.
pub struct Launch<'a> {
    /// chroot into this host directory first; None runs on the host.
    pub chroot: Option<&'a Path>,
    pub program: &'a Path,
    pub args: &'a [OsString],
    pub env: &'a [(OsString, OsString)],
    /// Keep the terminal (stdin, stdout, stderr and process group) instead of
    /// /dev/null in and a pipe out.
    pub interactive: bool,
}

/// How the script ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Exited(i32),
    Signaled(i32),
}

/// A started script: its init's pid and the read end of its output.
pub struct Running {
    init: libc::pid_t,
    output: Option<OwnedFd>,
    report: OwnedFd,
    own_group: bool,
    reaped: bool,
}

// Report records from the children: kind + value, 8 bytes, atomic in a pipe.
const REPORT_STATUS: i32 = 1;
const REPORT_EXEC_ERRNO: i32 = 2;
const REPORT_FORK_ERRNO: i32 = 3;

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "NUL byte in a script argument or variable",
        )
    })
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid out array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds are fresh and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Everything the children touch, owned by the parent for the clone's duration.
struct Prepared {
    chroot: Option<CString>,
    program: CString,
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    _envp: Vec<CString>,
    envp_ptrs: Vec<*const libc::c_char>,
    interactive: bool,
    stdin: RawFd,
    output: RawFd,
    output_read: RawFd,
    report: RawFd,
}

impl Prepared {
    fn new(
        launch: &Launch<'_>,
        stdin: RawFd,
        output: (RawFd, RawFd),
        report: RawFd,
    ) -> io::Result<Self> {
        let program = cstring(launch.program.as_os_str().as_bytes())?;
        let mut argv = vec![program.clone()];
        for arg in launch.args {
            argv.push(cstring(arg.as_bytes())?);
        }
        let mut envp = Vec::with_capacity(launch.env.len());
        for (key, value) in launch.env {
            let mut pair = key.as_bytes().to_vec();
            pair.push(b'=');
            pair.extend_from_slice(value.as_bytes());
            envp.push(cstring(&pair)?);
        }
        let argv_ptrs = argv
            .iter()
            .map(|a| a.as_ptr())
            .chain([std::ptr::null()])
            .collect();
        let envp_ptrs = envp
            .iter()
            .map(|e| e.as_ptr())
            .chain([std::ptr::null()])
            .collect();
        Ok(Prepared {
            chroot: launch
                .chroot
                .map(|p| cstring(p.as_os_str().as_bytes()))
                .transpose()?,
            program,
            _argv: argv,
            argv_ptrs,
            _envp: envp,
            envp_ptrs,
            interactive: launch.interactive,
            stdin,
            output: output.1,
            output_read: output.0,
            report,
        })
    }
}

/// fork(2) without glibc's atfork handlers, which take locks another thread
/// of the parent may have held at clone time.
unsafe fn raw_fork(flags: libc::c_long) -> libc::pid_t {
    // SAFETY: a clone without CLONE_VM and without a new stack behaves as fork.
    unsafe {
        libc::syscall(
            libc::SYS_clone,
            flags | libc::SIGCHLD as libc::c_long,
            0,
            0,
            0,
            0,
        ) as libc::pid_t
    }
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

unsafe fn report(fd: RawFd, kind: i32, value: i32) {
    let mut record = [0u8; 8];
    record[..4].copy_from_slice(&kind.to_ne_bytes());
    record[4..].copy_from_slice(&value.to_ne_bytes());
    // SAFETY: valid buffer; a failed write only loses the detail.
    unsafe {
        libc::write(fd, record.as_ptr().cast(), record.len());
    }
}

/// Start `launch`. The caller reads `output()` until EOF, then calls `wait`.
pub fn start(launch: &Launch<'_>) -> io::Result<Running> {
    let devnull = std::fs::File::open("/dev/null")?;
    let (out_read, out_write) = pipe()?;
    let (report_read, report_write) = pipe()?;
    let prepared = Prepared::new(
        launch,
        devnull.as_raw_fd(),
        (out_read.as_raw_fd(), out_write.as_raw_fd()),
        report_write.as_raw_fd(),
    )?;
    // SAFETY: the child only runs `init_process`, which keeps to
    // async-signal-safe system calls and never returns.
    let pid = unsafe { raw_fork(libc::CLONE_NEWPID as libc::c_long) };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: we are the freshly cloned child.
        unsafe { init_process(&prepared) }
    }
    drop(out_write);
    drop(report_write);
    Ok(Running {
        init: pid,
        output: (!launch.interactive).then_some(out_read),
        report: report_read,
        own_group: !launch.interactive,
        reaped: false,
    })
}

/// PID 1 of the script's namespace: fork the shell, wait for it, report, exit.
unsafe fn init_process(p: &Prepared) -> ! {
    // SAFETY (whole body): plain system calls on fds and memory prepared
    // before the clone; no allocation, no locks.
    unsafe {
        if !p.interactive {
            libc::setpgid(0, 0);
        }
        // If kiln dies, so does the namespace.
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        );
        libc::close(p.output_read);
        let child = raw_fork(0);
        if child == 0 {
            exec_shell(p);
        }
        if child < 0 {
            report(p.report, REPORT_FORK_ERRNO, errno());
            libc::_exit(127);
        }
        // Only the shell and its descendants hold the output pipe now, so
        // kiln sees EOF once they are all gone.
        libc::close(p.output);
        let mut status = 0;
        loop {
            let reaped = libc::waitpid(-1, &mut status, 0);
            if reaped == child {
                break;
            }
            if reaped < 0 && errno() != libc::EINTR {
                status = 127 << 8;
                break;
            }
        }
        report(p.report, REPORT_STATUS, status);
        let code = if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            128 + libc::WTERMSIG(status)
        };
        libc::_exit(code)
    }
}

unsafe fn exec_shell(p: &Prepared) -> ! {
    // SAFETY (whole body): as in init_process.
    unsafe {
        // kiln ignores SIGPIPE (Rust does) and may ignore SIGINT around a
        // break shell; ignored dispositions survive exec, defaults must not.
        for sig in 1..32 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        if !p.interactive {
            libc::dup2(p.stdin, 0);
            libc::dup2(p.output, 1);
            libc::dup2(p.output, 2);
        }
        if let Some(root) = &p.chroot
            && (libc::chroot(root.as_ptr()) < 0 || libc::chdir(c"/".as_ptr()) < 0)
        {
            report(p.report, REPORT_EXEC_ERRNO, errno());
            libc::_exit(127);
        }
        libc::execve(
            p.program.as_ptr(),
            p.argv_ptrs.as_ptr(),
            p.envp_ptrs.as_ptr(),
        );
        report(p.report, REPORT_EXEC_ERRNO, errno());
        libc::_exit(127)
    }
}

impl Running {
    /// The script's merged stdout and stderr (None for an interactive shell).
    pub fn output(&self) -> Option<BorrowedFd<'_>> {
        self.output.as_ref().map(|fd| std::os::fd::AsFd::as_fd(fd))
    }

    /// Kill the script, its process group and (with the init) its namespace.
    pub fn kill(&self) {
        if self.reaped {
            return;
        }
        // SAFETY: signals to a child we have not reaped yet (its pid cannot
        // have been reused) and to its own process group.
        unsafe {
            if self.own_group {
                libc::kill(-self.init, libc::SIGKILL);
            }
            libc::kill(self.init, libc::SIGKILL);
        }
    }

    /// Wait for the init to exit and return how the script ended.
    pub fn wait(mut self) -> io::Result<Ending> {
        let mut status = 0;
        loop {
            // SAFETY: valid out pointer; the pid is our child.
            let ret = unsafe { libc::waitpid(self.init, &mut status, 0) };
            if ret == self.init {
                break;
            }
            if ret < 0 && errno() != libc::EINTR {
                return Err(io::Error::last_os_error());
            }
        }
        self.reaped = true;
        let mut script_status = None;
        let mut buf = [0u8; 64];
        let mut filled = 0;
        loop {
            // SAFETY: valid buffer range.
            let n = unsafe {
                libc::read(
                    self.report.as_raw_fd(),
                    buf[filled..].as_mut_ptr().cast(),
                    buf.len() - filled,
                )
            };
            if n > 0 {
                filled += n as usize;
                if filled < buf.len() {
                    continue;
                }
            } else if n < 0 && errno() == libc::EINTR {
                continue;
            }
            break;
        }
        for record in buf[..filled].chunks_exact(8) {
            let kind = i32::from_ne_bytes(record[..4].try_into().expect("4 bytes"));
            let value = i32::from_ne_bytes(record[4..].try_into().expect("4 bytes"));
            match kind {
                REPORT_STATUS => script_status = Some(value),
                REPORT_EXEC_ERRNO | REPORT_FORK_ERRNO => {
                    return Err(io::Error::from_raw_os_error(value));
                }
                _ => {}
            }
        }
        // Without a report (the init was killed) the init's own status tells.
        let status = script_status.unwrap_or(status);
        Ok(if libc::WIFSIGNALED(status) {
            Ending::Signaled(libc::WTERMSIG(status))
        } else {
            Ending::Exited(libc::WEXITSTATUS(status))
        })
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.reaped {
            self.kill();
            let mut status = 0;
            // SAFETY: reaping our own child.
            unsafe {
                libc::waitpid(self.init, &mut status, 0);
            }
        }
    }
}
