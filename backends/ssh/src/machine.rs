//! The machines the ssh testbeds of this process run on now, so that two
//! testbeds of a parallel run (`-j`), each opened through a setup script,
//! never share one machine: a script may give the same machine to every
//! `open`.

use std::collections::BTreeSet;
use std::sync::Mutex;

/// A machine, as told apart from others: its `/etc/machine-id` (which
/// clones of one image may share) and the boot it is in.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Machine {
    pub machine_id: String,
    pub boot_id: String,
}

impl std::fmt::Display for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "machine-id {}, boot id {}",
            self.machine_id, self.boot_id
        )
    }
}

/// The machines an open testbed holds a [`Claim`] on.
static IN_USE: Mutex<BTreeSet<Machine>> = Mutex::new(BTreeSet::new());

/// A machine held by one open testbed; released when dropped.
#[derive(Debug)]
pub struct Claim(Machine);

impl Claim {
    /// Holds `machine`, or gives it back when another testbed holds it.
    pub fn take(machine: Machine) -> Result<Claim, Machine> {
        let mut in_use = IN_USE.lock().unwrap_or_else(|e| e.into_inner());
        if in_use.insert(machine.clone()) {
            Ok(Claim(machine))
        } else {
            Err(machine)
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        IN_USE
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(machine_id: &str, boot_id: &str) -> Machine {
        Machine {
            machine_id: machine_id.into(),
            boot_id: boot_id.into(),
        }
    }

    #[test]
    fn a_machine_is_held_by_one_claim_until_it_is_dropped() {
        let first = Claim::take(machine("m1", "b1")).expect("a free machine");
        assert_eq!(
            Claim::take(machine("m1", "b1")).unwrap_err(),
            machine("m1", "b1")
        );
        // A clone of the same image, booted apart: another machine.
        let clone = Claim::take(machine("m1", "b2")).expect("another boot");
        drop(first);
        let again = Claim::take(machine("m1", "b1")).expect("released");
        drop((clone, again));
    }
}
