use super::*;
use Event as E;
use ProvisionState as S;

/// The expected table, written out independently of `next_state` from the brief and
/// Ironic's states.py. Every (state, event) pair not listed here must be refused.
const EXPECTED: &[(ProvisionState, Event, ProvisionState)] = &[
    (S::Enroll, E::Manage, S::Manageable),
    (S::Manageable, E::Inspect, S::Inspecting),
    (S::Manageable, E::Provide, S::Cleaning),
    (S::Inspecting, E::Done, S::Manageable),
    (S::Inspecting, E::Fail, S::InspectFailed),
    (S::Inspecting, E::Timeout, S::InspectFailed),
    (S::Inspecting, E::Abort, S::InspectFailed),
    (S::InspectFailed, E::Manage, S::Manageable),
    (S::InspectFailed, E::Inspect, S::Inspecting),
    (S::Available, E::Deploy, S::Deploying),
    (S::Available, E::Manage, S::Manageable),
    (S::Deploying, E::Wait, S::WaitCallBack),
    (S::Deploying, E::Done, S::Active),
    (S::Deploying, E::Fail, S::DeployFailed),
    (S::Deploying, E::Timeout, S::DeployFailed),
    (S::WaitCallBack, E::Resume, S::Deploying),
    (S::WaitCallBack, E::Fail, S::DeployFailed),
    (S::WaitCallBack, E::Timeout, S::DeployFailed),
    (S::WaitCallBack, E::Abort, S::DeployFailed),
    (S::WaitCallBack, E::Undeploy, S::Deleting),
    (S::DeployFailed, E::Deploy, S::Deploying),
    (S::DeployFailed, E::Rebuild, S::Deploying),
    (S::DeployFailed, E::Undeploy, S::Deleting),
    (S::Active, E::Rebuild, S::Deploying),
    (S::Active, E::Undeploy, S::Deleting),
    (S::Deleting, E::Done, S::Cleaning),
    (S::Deleting, E::Fail, S::Error),
    (S::Deleting, E::Timeout, S::Error),
    (S::Cleaning, E::Done, S::Available),
    (S::Cleaning, E::Fail, S::CleanFailed),
    (S::Cleaning, E::Timeout, S::CleanFailed),
    (S::CleanFailed, E::Manage, S::Manageable),
    (S::Error, E::Rebuild, S::Deploying),
    (S::Error, E::Undeploy, S::Deleting),
];

#[test]
fn every_state_event_pair_matches_the_expected_table() {
    let mut checked = 0;
    for state in ProvisionState::ALL {
        for event in Event::ALL {
            let expected = EXPECTED
                .iter()
                .find(|(from, on, _)| *from == state && *on == event)
                .map(|(_, _, to)| *to);
            match (apply(state, event), expected) {
                (Ok(got), Some(want)) => assert_eq!(got, want, "{state} -{event}->"),
                (Err(err), None) => {
                    assert_eq!((err.state, err.event), (state, event));
                }
                (got, want) => panic!("{state} -{event}->: got {got:?}, want {want:?}"),
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 13 * 12);
}

#[test]
fn full_life_cycle_walks_from_enroll_to_active_and_back_to_available() {
    let steps = [
        (E::Manage, S::Manageable),
        (E::Inspect, S::Inspecting),
        (E::Done, S::Manageable),
        (E::Provide, S::Cleaning),
        (E::Done, S::Available),
        (E::Deploy, S::Deploying),
        (E::Wait, S::WaitCallBack),
        (E::Resume, S::Deploying),
        (E::Done, S::Active),
        (E::Undeploy, S::Deleting),
        (E::Done, S::Cleaning),
        (E::Done, S::Available),
    ];
    let mut state = S::Enroll;
    for (event, want) in steps {
        state = apply(state, event).unwrap();
        assert_eq!(state, want, "after {event}");
    }
}

#[test]
fn refusal_names_state_verb_and_allowed_verbs() {
    let err = apply(S::Active, E::Deploy).unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot deploy a node in state \"active\"; allowed verbs: undeploy, rebuild"
    );
    assert_eq!(err.allowed_verbs(), vec![E::Undeploy, E::Rebuild]);

    let err = apply(S::Deploying, E::Manage).unwrap_err();
    assert!(
        err.to_string().contains("no operator verb is allowed"),
        "{err}"
    );
}

#[test]
fn display_strings_are_ironics() {
    let names: Vec<&str> = ProvisionState::ALL.iter().map(|s| s.as_str()).collect();
    assert_eq!(
        names,
        [
            "enroll",
            "manageable",
            "inspecting",
            "inspect failed",
            "available",
            "deploying",
            "wait call-back",
            "active",
            "deploy failed",
            "cleaning",
            "clean failed",
            "deleting",
            "error"
        ]
    );
    for state in ProvisionState::ALL {
        assert_eq!(state.as_str().parse::<ProvisionState>(), Ok(state));
        let json = serde_json::to_string(&state).unwrap();
        assert_eq!(json, format!("\"{}\"", state.as_str()));
    }
    assert_eq!("deleted".parse::<Event>(), Ok(E::Undeploy));
    assert!("explode".parse::<Event>().is_err());
    assert!("wait callback".parse::<ProvisionState>().is_err());
}

#[test]
fn in_flight_states_have_timeouts_and_a_timeout_transition() {
    let in_flight: Vec<S> = ProvisionState::ALL
        .into_iter()
        .filter(|s| s.is_in_flight())
        .collect();
    assert_eq!(
        in_flight,
        [
            S::Inspecting,
            S::Deploying,
            S::WaitCallBack,
            S::Cleaning,
            S::Deleting
        ]
    );
    for state in in_flight {
        assert!(state.default_timeout().unwrap().as_secs() > 0);
        assert!(
            apply(state, E::Timeout).is_ok(),
            "{state} must accept timeout"
        );
        assert!(state.target().is_some());
    }
    // Stable states never time out.
    for state in [S::Enroll, S::Manageable, S::Available, S::Active] {
        assert!(apply(state, E::Timeout).is_err());
        assert_eq!(state.target(), None);
    }
}
