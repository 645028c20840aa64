//! What the peers' launchers share: the broker processes of one run (stopped with SIGTERM and
//! a bounded wait, SIGKILLed if dropped without that) and free loopback ports for them.

use rustix::process::{kill_process, Pid, Signal};
use std::process::Child;
use std::time::{Duration, Instant};

/// The broker processes of one run.
#[derive(Default)]
pub struct Processes {
    children: Vec<Child>,
}

impl Processes {
    pub fn push(&mut self, child: Child) {
        self.children.push(child);
    }

    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }

    /// The exit status of a process that has already ended, if any has.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.children
            .iter_mut()
            .find_map(|child| child.try_wait().ok().flatten())
    }

    /// SIGTERM to every process, then waits up to `grace` for them all to end (what is left
    /// is SIGKILLed on drop).
    pub fn stop(mut self, grace: Duration) {
        for child in &self.children {
            if let Some(pid) = Pid::from_raw(child.id() as i32) {
                let _ = kill_process(pid, Signal::TERM);
            }
        }
        let deadline = Instant::now() + grace;
        for child in &mut self.children {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `count` loopback ports outside the kernel's ephemeral range, so no connection takes one
/// before the server it is meant for binds it.
pub fn free_ports(count: usize) -> Result<Vec<u16>, String> {
    cairn_launch::ports::reserve_each(count)
}
