//! The node provision state machine, modelled on Ironic's (ironic/common/states.py).
//!
//! Stable states wait for an operator verb; "in flight" states are driven by the
//! conductor's internal events (done, fail, wait, resume, timeout) and carry a
//! deadline so a restarted conductor can tell what to resume and what to time out.
//! Kiln has no separate "verifying" or "clean wait" states: managing an enrolled node
//! is immediate and cleaning is a metadata-only erase.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where a node is in its life cycle. Display strings are Ironic's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum ProvisionState {
    Enroll,
    Manageable,
    Inspecting,
    InspectFailed,
    Available,
    Deploying,
    WaitCallBack,
    Active,
    DeployFailed,
    Cleaning,
    CleanFailed,
    Deleting,
    Error,
}

/// Something that moves a node between states: an operator verb or an internal event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Event {
    // Operator verbs.
    Manage,
    Inspect,
    Provide,
    Deploy,
    /// Ironic's "deleted": tear the instance down.
    Undeploy,
    Rebuild,
    Abort,
    // Internal events, raised by the conductor only.
    Done,
    Fail,
    /// deploying -> wait call-back: the conductor waits for the agent.
    Wait,
    /// wait call-back -> deploying: the agent called back.
    Resume,
    Timeout,
}

impl ProvisionState {
    pub const ALL: [ProvisionState; 13] = [
        Self::Enroll,
        Self::Manageable,
        Self::Inspecting,
        Self::InspectFailed,
        Self::Available,
        Self::Deploying,
        Self::WaitCallBack,
        Self::Active,
        Self::DeployFailed,
        Self::Cleaning,
        Self::CleanFailed,
        Self::Deleting,
        Self::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enroll => "enroll",
            Self::Manageable => "manageable",
            Self::Inspecting => "inspecting",
            Self::InspectFailed => "inspect failed",
            Self::Available => "available",
            Self::Deploying => "deploying",
            Self::WaitCallBack => "wait call-back",
            Self::Active => "active",
            Self::DeployFailed => "deploy failed",
            Self::Cleaning => "cleaning",
            Self::CleanFailed => "clean failed",
            Self::Deleting => "deleting",
            Self::Error => "error",
        }
    }

    /// States in which the conductor (not the operator) owes the next step; each has
    /// a deadline after which the `timeout` event applies.
    pub fn is_in_flight(self) -> bool {
        self.default_timeout().is_some()
    }

    /// How long a node may stay in an in-flight state before it times out; `None` for
    /// stable and failed states. Values follow Ironic's defaults (inspect_timeout,
    /// deploy_callback_timeout, clean_callback_timeout: 30 minutes).
    pub fn default_timeout(self) -> Option<Duration> {
        match self {
            Self::Inspecting | Self::Deploying | Self::WaitCallBack | Self::Cleaning => {
                Some(Duration::from_secs(1800))
            }
            // Tearing down only powers off and erases metadata.
            Self::Deleting => Some(Duration::from_secs(600)),
            _ => None,
        }
    }

    /// The stable state an in-flight or failed state is heading for (Ironic's
    /// target_provision_state); `None` for stable states.
    pub fn target(self) -> Option<ProvisionState> {
        match self {
            Self::Inspecting | Self::InspectFailed => Some(Self::Manageable),
            Self::Deploying | Self::WaitCallBack | Self::DeployFailed => Some(Self::Active),
            Self::Cleaning | Self::CleanFailed | Self::Deleting => Some(Self::Available),
            _ => None,
        }
    }

    /// Every event accepted in this state, in declaration order.
    pub fn allowed_events(self) -> Vec<Event> {
        Event::ALL
            .into_iter()
            .filter(|&event| next_state(self, event).is_some())
            .collect()
    }

    /// The operator verbs accepted in this state.
    pub fn allowed_verbs(self) -> Vec<Event> {
        self.allowed_events()
            .into_iter()
            .filter(|event| event.is_verb())
            .collect()
    }
}

impl Event {
    pub const ALL: [Event; 12] = [
        Self::Manage,
        Self::Inspect,
        Self::Provide,
        Self::Deploy,
        Self::Undeploy,
        Self::Rebuild,
        Self::Abort,
        Self::Done,
        Self::Fail,
        Self::Wait,
        Self::Resume,
        Self::Timeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Manage => "manage",
            Self::Inspect => "inspect",
            Self::Provide => "provide",
            Self::Deploy => "deploy",
            Self::Undeploy => "undeploy",
            Self::Rebuild => "rebuild",
            Self::Abort => "abort",
            Self::Done => "done",
            Self::Fail => "fail",
            Self::Wait => "wait",
            Self::Resume => "resume",
            Self::Timeout => "timeout",
        }
    }

    /// True for the verbs an operator may send; false for conductor-internal events.
    pub fn is_verb(self) -> bool {
        matches!(
            self,
            Self::Manage
                | Self::Inspect
                | Self::Provide
                | Self::Deploy
                | Self::Undeploy
                | Self::Rebuild
                | Self::Abort
        )
    }
}

/// The transition table. `None` means the event is refused in that state.
fn next_state(state: ProvisionState, event: Event) -> Option<ProvisionState> {
    use Event as E;
    use ProvisionState as S;
    let next = match (state, event) {
        (S::Enroll, E::Manage) => S::Manageable,

        (S::Manageable, E::Inspect) => S::Inspecting,
        (S::Manageable, E::Provide) => S::Cleaning,

        (S::Inspecting, E::Done) => S::Manageable,
        (S::Inspecting, E::Fail | E::Timeout | E::Abort) => S::InspectFailed,
        (S::InspectFailed, E::Manage) => S::Manageable,
        (S::InspectFailed, E::Inspect) => S::Inspecting,

        (S::Available, E::Deploy) => S::Deploying,
        (S::Available, E::Manage) => S::Manageable,

        (S::Deploying, E::Wait) => S::WaitCallBack,
        (S::Deploying, E::Done) => S::Active,
        (S::Deploying, E::Fail | E::Timeout) => S::DeployFailed,
        (S::WaitCallBack, E::Resume) => S::Deploying,
        (S::WaitCallBack, E::Fail | E::Timeout | E::Abort) => S::DeployFailed,
        (S::WaitCallBack, E::Undeploy) => S::Deleting,

        (S::DeployFailed, E::Deploy | E::Rebuild) => S::Deploying,
        (S::DeployFailed, E::Undeploy) => S::Deleting,

        (S::Active, E::Rebuild) => S::Deploying,
        (S::Active, E::Undeploy) => S::Deleting,

        (S::Deleting, E::Done) => S::Cleaning,
        (S::Deleting, E::Fail | E::Timeout) => S::Error,

        (S::Cleaning, E::Done) => S::Available,
        (S::Cleaning, E::Fail | E::Timeout) => S::CleanFailed,
        (S::CleanFailed, E::Manage) => S::Manageable,

        (S::Error, E::Rebuild) => S::Deploying,
        (S::Error, E::Undeploy) => S::Deleting,

        _ => return None,
    };
    Some(next)
}

/// An event that the node's current state does not accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "cannot {event} a node in state \"{state}\"; {}",
    allowed_description(*state)
)]
pub struct TransitionError {
    pub state: ProvisionState,
    pub event: Event,
}

impl TransitionError {
    pub fn allowed_verbs(&self) -> Vec<Event> {
        self.state.allowed_verbs()
    }
}

fn allowed_description(state: ProvisionState) -> String {
    let verbs = state.allowed_verbs();
    if verbs.is_empty() {
        "no operator verb is allowed there until the conductor finishes".to_string()
    } else {
        let names: Vec<&str> = verbs.iter().map(|verb| verb.as_str()).collect();
        format!("allowed verbs: {}", names.join(", "))
    }
}

/// Applies `event` to `state`, returning the new state or why it is refused.
pub fn apply(state: ProvisionState, event: Event) -> Result<ProvisionState, TransitionError> {
    next_state(state, event).ok_or(TransitionError { state, event })
}

/// A state or event name that is not one of ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseNameError {
    #[error("unknown provision state \"{0}\"")]
    State(String),
    #[error(
        "unknown event \"{0}\" (verbs: manage, inspect, provide, deploy, undeploy, rebuild, abort)"
    )]
    Event(String),
}

impl fmt::Display for ProvisionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ProvisionState {
    type Err = ParseNameError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|state| state.as_str() == text)
            .ok_or_else(|| ParseNameError::State(text.to_string()))
    }
}

impl FromStr for Event {
    type Err = ParseNameError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        // Ironic's API name for undeploy is "deleted".
        if text == "deleted" {
            return Ok(Self::Undeploy);
        }
        Self::ALL
            .into_iter()
            .find(|event| event.as_str() == text)
            .ok_or_else(|| ParseNameError::Event(text.to_string()))
    }
}

impl From<ProvisionState> for String {
    fn from(state: ProvisionState) -> String {
        state.as_str().to_string()
    }
}

impl TryFrom<String> for ProvisionState {
    type Error = ParseNameError;
    fn try_from(text: String) -> Result<Self, ParseNameError> {
        text.parse()
    }
}

impl From<Event> for String {
    fn from(event: Event) -> String {
        event.as_str().to_string()
    }
}

impl TryFrom<String> for Event {
    type Error = ParseNameError;
    fn try_from(text: String) -> Result<Self, ParseNameError> {
        text.parse()
    }
}

#[cfg(test)]
mod tests;
