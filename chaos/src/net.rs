//! The campaign's private network: a network namespace, and partitions as nftables rules in it.
//!
//! [`enter_namespace`] re-executes the campaign with `unshare --net --pid --mount --fork
//! --kill-child`: the campaign becomes process 1 of a new PID namespace inside new network and
//! mount namespaces, so when it exits (normally, on panic, or killed because `unshare` got
//! Ctrl-C) the kernel kills every node it started, and the network namespace with its rules
//! and the mount namespace with the `power` fault's FUSE mounts disappear with them.
//! Nothing reaches a real network: the namespace only has a loopback interface. Inside, nodes
//! listen on 127.0.0.11, .12, ... and a partition is one nftables table dropping packets by
//! (source, destination) address pairs.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

/// Set in the environment of the re-executed campaign, inside the namespace.
pub const IN_NAMESPACE_ENV: &str = "CAIRN_CHAOS_IN_NAMESPACE";

const TABLE: &str = "cairn_chaos";
const CHAIN: &str = "partition";

/// Where the campaign runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkMode {
    /// Inside the private namespace: partitions are possible.
    Namespace,
    /// On the host's network (no privilege for a namespace): process faults only.
    Host,
}

/// What the caller should do after [`enter_namespace`].
pub enum Entered {
    /// This process is the campaign; run it in the given mode.
    Run(NetworkMode),
    /// The campaign ran in a re-executed child, which exited with this code.
    Exited(i32),
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|error| format!("{program}: {error}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {} {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Re-executes this program inside a fresh network and PID namespace, unless it already runs
/// in one. Where a namespace cannot be made, says why on stderr and runs on the host.
pub fn enter_namespace(want_namespace: bool) -> Entered {
    if std::env::var_os(IN_NAMESPACE_ENV).is_some() {
        return match setup_inside() {
            Ok(()) => Entered::Run(NetworkMode::Namespace),
            Err(error) => {
                eprintln!(
                    "cairn-chaos: inside the namespace, the network setup failed ({error}); \
                     running process faults only"
                );
                Entered::Run(NetworkMode::Host)
            }
        };
    }
    if !want_namespace {
        return Entered::Run(NetworkMode::Host);
    }
    // Probe first, so a failure of the campaign itself is not mistaken for no privilege.
    if let Err(error) = run(
        "unshare",
        &[
            "--net",
            "--pid",
            "--mount",
            "--fork",
            "--kill-child",
            "true",
        ],
    ) {
        eprintln!(
            "cairn-chaos: cannot create a private network namespace ({error}); running process \
             faults only (no partitions) on the host's loopback"
        );
        return Entered::Run(NetworkMode::Host);
    }
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(error) => {
            eprintln!("cairn-chaos: cannot find my own executable ({error}); running on the host");
            return Entered::Run(NetworkMode::Host);
        }
    };
    let status = Command::new("unshare")
        .args(["--net", "--pid", "--mount", "--fork", "--kill-child"])
        .arg(exe)
        .args(std::env::args_os().skip(1))
        .env(IN_NAMESPACE_ENV, "1")
        .status();
    match status {
        Ok(status) => Entered::Exited(status.code().unwrap_or(1)),
        Err(error) => {
            eprintln!("cairn-chaos: unshare failed to start ({error})");
            Entered::Exited(1)
        }
    }
}

/// Loopback up, and an empty filter chain hooked on input. Dropping on input, not output, makes
/// a partition silent as a real one is: the sender's packets leave without an error (an output
/// drop fails `send` and `connect` at once with EPERM) and its connections time out.
fn setup_inside() -> Result<(), String> {
    run("ip", &["link", "set", "lo", "up"])?;
    nft(&format!(
        "add table inet {TABLE}\nadd chain inet {TABLE} {CHAIN} {{ type filter hook input priority 0; policy accept; }}\n"
    ))
}

fn nft(script: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| format!("nft: {error}"))?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(script.as_bytes())
        .map_err(|error| format!("nft stdin: {error}"))?;
    let output = child
        .wait_with_output()
        .map_err(|error| format!("nft: {error}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft: {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// The nftables script that replaces every rule with drops of the given (from, to) pairs.
pub fn partition_script(drops: &[(Ipv4Addr, Ipv4Addr)]) -> String {
    let mut script = format!("flush chain inet {TABLE} {CHAIN}\n");
    for (from, to) in drops {
        script.push_str(&format!(
            "add rule inet {TABLE} {CHAIN} ip saddr {from} ip daddr {to} drop\n"
        ));
    }
    script
}

/// Drops packets from each `from` to its `to` (replacing the previous partition), atomically.
pub fn set_partition(drops: &[(Ipv4Addr, Ipv4Addr)]) -> Result<(), String> {
    nft(&partition_script(drops))
}

/// Removes every partition rule.
pub fn heal() -> Result<(), String> {
    set_partition(&[])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_script_flushes_then_drops_each_pair() {
        let a = Ipv4Addr::new(127, 0, 0, 11);
        let b = Ipv4Addr::new(127, 0, 0, 12);
        assert_eq!(
            partition_script(&[(a, b), (b, a)]),
            "flush chain inet cairn_chaos partition\n\
             add rule inet cairn_chaos partition ip saddr 127.0.0.11 ip daddr 127.0.0.12 drop\n\
             add rule inet cairn_chaos partition ip saddr 127.0.0.12 ip daddr 127.0.0.11 drop\n"
        );
        assert_eq!(
            partition_script(&[]),
            "flush chain inet cairn_chaos partition\n"
        );
    }
}
