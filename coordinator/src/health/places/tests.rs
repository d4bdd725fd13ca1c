#![allow(clippy::unwrap_used)]

use super::*;

fn limits(all: usize, per_peer: usize, ending: usize) -> Places {
    Places::new(PlaceLimits {
        all,
        per_peer,
        ending,
        known: 2,
        known_for: KNOWN_FOR,
        wait: Duration::from_millis(200),
    })
}

/// An agent's connection from `last`, authenticated and closed: the
/// address is known from then on.
fn agent_called_from(places: &Places, last: u8) {
    let place = from(places, last).unwrap().place;
    place.state().authenticated();
}

fn from(places: &Places, last: u8) -> Result<Admitted, NoPlace> {
    let peer = SocketAddr::from(([127, 0, 1, last], 40_000));
    places.admit(Some(peer), Arc::new(ConnectionState::new(Some(peer))))
}

/// The reason a refused admission gives.
fn refused(admission: Result<Admitted, NoPlace>) -> &'static str {
    match admission {
        Err(NoPlace::Refused(reason)) => reason,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// The turn to wait an admission gives.
fn waits(admission: Result<Admitted, NoPlace>) -> Waiting {
    match admission {
        Err(NoPlace::Wait(waiting)) => waiting,
        other => panic!("expected a wait, got {other:?}"),
    }
}

fn ended_now(state: &ConnectionState) -> bool {
    state
        .next_end(std::time::Duration::from_secs(3600))
        .is_some_and(|end| end.reason.is_none())
}

#[test]
fn a_peer_holds_at_most_its_limit_until_it_lets_go() {
    let places = limits(100, 2, 8);
    let one: IpAddr = [127, 0, 1, 1].into();
    let first = from(&places, 1).unwrap();
    let second = from(&places, 1).unwrap();
    assert_eq!(refused(from(&places, 1)), REFUSED_PEER_LIMIT);
    // The same address over IPv6's IPv4-mapped form is the same peer.
    let mapped: SocketAddr = "[::ffff:127.0.1.1]:1".parse().unwrap();
    let state = Arc::new(ConnectionState::new(Some(mapped)));
    assert_eq!(
        refused(places.admit(Some(mapped), state)),
        REFUSED_PEER_LIMIT
    );
    let other = from(&places, 2).unwrap();
    drop(first);
    assert_eq!(places.held_by(one), 1);
    let third = from(&places, 1).unwrap();
    drop((second, third, other));
    assert_eq!(places.held_by(one), 0);
    assert_eq!(places.held(), 0);
}

#[test]
fn at_the_cap_the_oldest_stranger_gives_way_and_agents_never_do() {
    let places = limits(3, 10, 8);
    let agent = from(&places, 1).unwrap().place;
    agent.state().authenticated();
    let oldest = from(&places, 2).unwrap().place;
    let younger = from(&places, 3).unwrap().place;

    let newcomer = from(&places, 4).unwrap();
    assert_eq!(newcomer.ended, Some(oldest.state().peer()));
    assert!(ended_now(oldest.state()), "the oldest stranger is ended");
    assert!(!ended_now(younger.state()) && !ended_now(agent.state()));
    // Until the ended one closes, four are held: the cap's overshoot is
    // the connections still closing.
    assert_eq!(places.held(), 4);
    drop(oldest);
    assert_eq!(places.held(), 3);

    // The next newcomer ends the next stranger, never the agent.
    let next = from(&places, 5).unwrap();
    assert_eq!(next.ended, Some(younger.state().peer()));
    drop(younger);
    // Once every place is an agent's, a newcomer is refused.
    newcomer.place.state().authenticated();
    next.place.state().authenticated();
    assert_eq!(refused(from(&places, 6)), REFUSED_CONNECTION_LIMIT);
    assert!(!ended_now(agent.state()));
}

#[test]
fn no_more_are_ended_than_may_be_closing_at_once() {
    let places = limits(2, 10, 1);
    let first = from(&places, 1).unwrap().place;
    let _second = from(&places, 2).unwrap().place;
    let third = from(&places, 3).unwrap();
    assert!(third.ended.is_some());
    // The first has not closed yet: no second connection is ended for a
    // newcomer, which is refused instead.
    assert_eq!(refused(from(&places, 4)), REFUSED_CONNECTION_LIMIT);
    drop(first);
    assert!(from(&places, 4).unwrap().ended.is_some());
}

#[test]
fn a_connection_ends_at_the_first_of_idle_and_asked() {
    let idle = std::time::Duration::from_secs(10);
    let state = Arc::new(ConnectionState::new(None));
    let quiet = state.next_end(idle).unwrap();
    assert_eq!(quiet.reason, Some(crate::metrics::REFUSED_IDLE));
    // A stream open: no idle end.
    let stream = state.stream_opened();
    assert_eq!(state.next_end(idle), None);
    // Asked to end after its credentials were refused: that end, uncounted
    // there (the refused call was).
    state.end_after(std::time::Duration::from_millis(250));
    let asked = state.next_end(idle).unwrap();
    assert_eq!(asked.reason, None);
    assert!(asked.at < quiet.at);
    drop(stream);
    assert_eq!(state.next_end(idle).unwrap(), asked, "the earlier end wins");
    // A later request does not postpone it.
    state.end_after(std::time::Duration::from_secs(60));
    assert_eq!(state.next_end(idle).unwrap(), asked);
}

#[tokio::test]
async fn an_end_asked_before_the_handshake_is_seen_by_it() {
    let state = Arc::new(ConnectionState::new(None));
    let waiting = tokio::spawn({
        let state = Arc::clone(&state);
        async move { state.ended().await }
    });
    tokio::task::yield_now().await;
    assert!(!waiting.is_finished());
    state.end_now();
    tokio::time::timeout(std::time::Duration::from_secs(1), waiting)
        .await
        .expect("woken")
        .unwrap();
}

#[test]
fn strangers_from_known_addresses_give_way_last_and_only_to_known_ones() {
    let places = limits(3, 10, 8);
    agent_called_from(&places, 1);
    let agent_again = from(&places, 1).unwrap().place;
    assert_eq!(agent_again.standing(), Standing::Known);
    let stranger = from(&places, 2).unwrap().place;
    assert_eq!(stranger.standing(), Standing::Unknown);
    let younger_stranger = from(&places, 3).unwrap().place;

    // A newcomer from an unknown address ends the oldest unknown stranger,
    // never the older connection from the known address.
    let newcomer = from(&places, 4).unwrap();
    assert_eq!(newcomer.ended, Some(stranger.state().peer()));
    assert!(!ended_now(agent_again.state()));
    drop(stranger);
    drop(younger_stranger);
    drop(newcomer);

    // Known strangers only: an unknown newcomer is refused...
    agent_called_from(&places, 5);
    let second = from(&places, 5).unwrap().place;
    let held_known = from(&places, 1).unwrap().place;
    assert_eq!(held_known.standing(), Standing::Known);
    assert_eq!(places.held(), 3);
    assert_eq!(refused(from(&places, 8)), REFUSED_CONNECTION_LIMIT);
    assert!(!ended_now(agent_again.state()) && !ended_now(second.state()));
    // ...and a known newcomer ends the oldest known stranger.
    let known_newcomer = from(&places, 5).unwrap();
    assert_eq!(known_newcomer.ended, Some(agent_again.state().peer()));
}

#[test]
fn known_addresses_are_bounded_and_expire() {
    let places = limits(10, 10, 8);
    agent_called_from(&places, 1);
    agent_called_from(&places, 2);
    // A third pushes out the one known longest ago.
    agent_called_from(&places, 3);
    assert_eq!(
        from(&places, 1).unwrap().place.standing(),
        Standing::Unknown
    );
    assert_eq!(from(&places, 3).unwrap().place.standing(), Standing::Known);
    // A connection that never authenticated makes nothing known.
    drop(from(&places, 4));
    assert_eq!(
        from(&places, 4).unwrap().place.standing(),
        Standing::Unknown
    );

    let forgetful = Places::new(PlaceLimits {
        all: 10,
        per_peer: 10,
        ending: 8,
        known: 2,
        known_for: std::time::Duration::ZERO,
        wait: Duration::ZERO,
    });
    agent_called_from(&forgetful, 1);
    std::thread::sleep(std::time::Duration::from_millis(5));
    assert_eq!(
        from(&forgetful, 1).unwrap().place.standing(),
        Standing::Unknown
    );
}

#[test]
fn strangers_churning_at_the_cap_leave_known_newcomers_a_budget_of_their_own() {
    let places = limits(2, 10, 1);
    agent_called_from(&places, 1);
    let _first = from(&places, 2).unwrap().place;
    let _second = from(&places, 3).unwrap().place;
    // A stranger's newcomer ends one; the next stranger finds the budget
    // for strangers spent and is refused...
    let third = from(&places, 4).unwrap();
    assert!(third.ended.is_some());
    assert_eq!(refused(from(&places, 5)), REFUSED_CONNECTION_LIMIT);
    // ...while the agent's address still gets a place.
    let agent = from(&places, 1).unwrap();
    assert!(agent.ended.is_some());
    assert_eq!(agent.place.standing(), Standing::Known);
    // Its budget spent too, the next from a known address waits for a
    // place instead of being refused.
    drop(waits(from(&places, 1)));
}

#[tokio::test]
async fn a_known_newcomer_without_a_place_waits_for_one_to_close() {
    let places = limits(2, 10, 1);
    agent_called_from(&places, 1);
    let first = from(&places, 2).unwrap().place;
    let _second = from(&places, 3).unwrap().place;
    // The agent's first newcomer ends a stranger; its budget is spent until
    // that one closes.
    let agent = from(&places, 1).unwrap();
    assert_eq!(agent.ended, Some(first.state().peer()));
    let waiting = waits(from(&places, 1));
    assert_eq!(places.held_by([127, 0, 1, 1].into()), 2, "the wait counts");
    let admitted = tokio::spawn(waiting.place());
    tokio::task::yield_now().await;
    assert!(!admitted.is_finished(), "no place until one closes");
    drop(first);
    let admitted = admitted.await.unwrap().unwrap();
    assert_eq!(admitted.place.standing(), Standing::Known);
    assert!(admitted.ended.is_some(), "it ended the next stranger");
    assert_eq!(places.held_by([127, 0, 1, 1].into()), 2);
    drop((agent, admitted));
    assert_eq!(places.held_by([127, 0, 1, 1].into()), 0);
}

#[tokio::test]
async fn a_wait_is_bounded_in_time_in_number_and_per_address() {
    let places = limits(1, 3, 1);
    agent_called_from(&places, 1);
    agent_called_from(&places, 2);
    let stranger = from(&places, 3).unwrap().place;
    let _agent = from(&places, 1).unwrap();
    assert!(ended_now(stranger.state()));
    // One may wait at once (the budget's size); a second known newcomer is
    // refused.
    let waiting = waits(from(&places, 1));
    assert_eq!(refused(from(&places, 2)), REFUSED_KNOWN_CONNECTION_LIMIT);
    // Nothing closes: the wait ends refused, and its count goes.
    assert_eq!(
        waiting.place().await.unwrap_err(),
        REFUSED_KNOWN_CONNECTION_LIMIT
    );
    assert_eq!(places.held_by([127, 0, 1, 1].into()), 1);
    // An address at its own cap does not wait.
    let _again = waits(from(&places, 1));
    assert_eq!(places.held_by([127, 0, 1, 1].into()), 2);
    drop(stranger);
    let _third = from(&places, 1).unwrap();
    assert_eq!(refused(from(&places, 1)), REFUSED_PEER_LIMIT);
}
