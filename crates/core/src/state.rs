//! The states of sandboxes and containers, and the only function that moves them.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SandboxState {
    /// RunPodSandbox has recorded its intent; the netns may or may not exist yet.
    Creating,
    Ready,
    NotReady,
    /// RemovePodSandbox has started; startup GC finishes it.
    Removing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerState {
    /// CreateContainer has recorded its intent; startup GC undoes it if it never finished.
    Creating,
    Created,
    Running,
    Exited,
    /// RemoveContainer has started; startup GC finishes it.
    Removing,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} cannot go from {from} to {to}")]
pub struct TransitionError {
    pub what: &'static str,
    pub from: String,
    pub to: String,
}

impl SandboxState {
    pub fn transition(self, to: SandboxState) -> Result<SandboxState, TransitionError> {
        use SandboxState::*;
        let ok = matches!(
            (self, to),
            (Creating, Ready)
                | (Creating, Removing)
                | (Ready, NotReady)
                | (Ready, Removing)
                | (NotReady, NotReady)
                | (NotReady, Removing)
                | (Removing, Removing)
        );
        if ok {
            Ok(to)
        } else {
            Err(TransitionError {
                what: "pod sandbox",
                from: format!("{self:?}"),
                to: format!("{to:?}"),
            })
        }
    }
}

impl ContainerState {
    pub fn transition(self, to: ContainerState) -> Result<ContainerState, TransitionError> {
        use ContainerState::*;
        let ok = matches!(
            (self, to),
            (Creating, Created)
                | (Creating, Removing)
                | (Created, Running)
                | (Created, Exited)
                | (Created, Removing)
                | (Running, Exited)
                | (Exited, Removing)
                | (Removing, Removing)
        );
        if ok {
            Ok(to)
        } else {
            Err(TransitionError {
                what: "container",
                from: format!("{self:?}"),
                to: format!("{to:?}"),
            })
        }
    }

    /// Whether a VM may be running or about to run for this container.
    pub fn is_live(self) -> bool {
        matches!(
            self,
            ContainerState::Creating | ContainerState::Created | ContainerState::Running
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn container_lifecycle() {
        use ContainerState::*;
        let mut s = Creating;
        for next in [Created, Running, Exited, Removing] {
            s = s.transition(next).expect("legal");
        }
        assert!(Exited.transition(Running).is_err());
        assert!(Running.transition(Created).is_err());
        assert!(Running.transition(Removing).is_err(), "stop before remove");
        let e = Removing.transition(Running).unwrap_err();
        assert_eq!(
            e.to_string(),
            "container cannot go from Removing to Running"
        );
        assert!(Running.is_live() && !Exited.is_live());
    }

    #[test]
    fn sandbox_lifecycle() {
        use SandboxState::*;
        assert_eq!(Creating.transition(Ready), Ok(Ready));
        assert_eq!(Ready.transition(NotReady), Ok(NotReady));
        assert_eq!(NotReady.transition(NotReady), Ok(NotReady));
        assert!(NotReady.transition(Ready).is_err());
        assert_eq!(NotReady.transition(Removing), Ok(Removing));
    }
}
