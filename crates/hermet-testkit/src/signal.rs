//! Signals to the processes a test started, sent with `kill(2)` directly.
//!
//! Never through the `kill` command: procps-ng 4.0.2 (Debian 12) parses `kill -SIG -PGID` as
//! `kill(-1, SIG)`, which as root signals every process on the machine — the test run, the
//! services and whatever else runs there. Only positive ids are accepted here, so neither 0 (the
//! caller's own group) nor -1 (everything) can be reached by mistake.

use std::io;

/// The signals the tests send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Term,
    Kill,
    Stop,
    Cont,
}

impl Signal {
    fn raw(self) -> libc::c_int {
        match self {
            Signal::Term => libc::SIGTERM,
            Signal::Kill => libc::SIGKILL,
            Signal::Stop => libc::SIGSTOP,
            Signal::Cont => libc::SIGCONT,
        }
    }
}

fn target(id: u32) -> io::Result<libc::pid_t> {
    match libc::pid_t::try_from(id) {
        Ok(pid) if pid > 1 => Ok(pid),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("refusing to signal process id {id}"),
        )),
    }
}

/// Sends `sig` to the process `pid`.
pub fn process(pid: u32, sig: Signal) -> io::Result<()> {
    let pid = target(pid)?;
    // SAFETY: kill(2) takes plain integers; `target` keeps the id positive and above 1.
    answered(unsafe { libc::kill(pid, sig.raw()) })
}

/// Sends `sig` to every process of the group `pgid` (a child started with `process_group(0)`
/// leads the group whose id is its pid).
pub fn group(pgid: u32, sig: Signal) -> io::Result<()> {
    let pgid = target(pgid)?;
    // SAFETY: as above; killpg never takes a negative id here.
    answered(unsafe { libc::killpg(pgid, sig.raw()) })
}

/// A system call's `0` or `-1` as a `Result`.
fn answered(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_ids_that_reach_beyond_one_process() {
        for id in [0, 1, u32::MAX] {
            assert!(process(id, Signal::Cont).is_err(), "{id}");
            assert!(group(id, Signal::Cont).is_err(), "{id}");
        }
    }

    #[test]
    fn a_group_signal_reaches_only_that_group() {
        use std::os::unix::process::CommandExt;
        let mut other = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        let mut led = std::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .expect("sleep");
        group(led.id(), Signal::Kill).expect("killpg");
        let status = led.wait().expect("wait");
        assert!(!status.success(), "the group's process was killed");
        assert!(
            other.try_wait().expect("try_wait").is_none(),
            "the other one still runs"
        );
        process(other.id(), Signal::Kill).expect("kill");
        other.wait().expect("wait");
    }
}
