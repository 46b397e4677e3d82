//! The one-for-one supervisor, driven with small test actors as its children: crash
//! restarts, backoff, restart by name while calls flow, and the per-child record.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentcom_core::supervision::RestartPolicy;
use agentcom_hub::events::{ActorEventKind, HubEvent, Topic};
use agentcom_hub::pubsub::{PubSub, PubSubMsg, Publisher, Subscriptions};
use agentcom_hub::service::{Service, ServiceError, Slot};
use agentcom_hub::supervisor::{
    ChildRecord, ChildSpec, ChildStatus, Supervisor, SupervisorArgs, SupervisorError, SupervisorMsg,
};
use common::{within, EventLog, WAIT};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::oneshot;

/// What a [`Worker`] instance answers: the number it was sent and which start it is.
type Echoed = (u64, u32);

enum WorkerMsg {
    Echo(u64, RpcReplyPort<Echoed>),
    /// Append to the log shared by every instance (one-way).
    Record(u64),
    /// Block until `release` fires, then panic if `then_panic`.
    Hold {
        release: oneshot::Receiver<()>,
        then_panic: bool,
    },
    Crash,
}

/// What every instance of one child shares with the test.
#[derive(Clone, Default)]
struct WorkerShared {
    starts: Arc<AtomicU32>,
    refuse_start: Arc<AtomicBool>,
    /// Every `Record` handled, with the instance that handled it.
    log: Arc<Mutex<Vec<(u64, u32)>>>,
}

struct Worker;

impl Actor for Worker {
    type Msg = WorkerMsg;
    type State = (u32, WorkerShared);
    type Arguments = WorkerShared;

    async fn pre_start(
        &self,
        _: ActorRef<WorkerMsg>,
        shared: WorkerShared,
    ) -> Result<Self::State, ActorProcessingErr> {
        if shared.refuse_start.load(Ordering::SeqCst) {
            return Err("worker refusing to start (test)".into());
        }
        let instance = shared.starts.fetch_add(1, Ordering::SeqCst) + 1;
        Ok((instance, shared))
    }

    async fn handle(
        &self,
        _: ActorRef<WorkerMsg>,
        msg: WorkerMsg,
        (instance, shared): &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            WorkerMsg::Echo(n, reply) => {
                let _ = reply.send((n, *instance));
            }
            WorkerMsg::Record(n) => shared.log.lock().unwrap().push((n, *instance)),
            WorkerMsg::Hold {
                release,
                then_panic,
            } => {
                let _ = release.await;
                if then_panic {
                    panic!("worker panicked after a hold (test)");
                }
            }
            WorkerMsg::Crash => panic!("injected crash (test)"),
        }
        Ok(())
    }
}

/// A supervisor over two workers, `worker` (with a crash hook) and `sibling`, plus a
/// pubsub actor for its `actors` events.
struct Tree {
    supervisor: ActorRef<SupervisorMsg>,
    worker: Service<WorkerMsg>,
    sibling: Service<WorkerMsg>,
    shared: WorkerShared,
    sibling_shared: WorkerShared,
    events: EventLog,
}

fn worker_spec(
    name: &'static str,
    slot: &Arc<Slot<WorkerMsg>>,
    shared: &WorkerShared,
) -> ChildSpec {
    let shared = shared.clone();
    ChildSpec::new(name, "service", slot.clone(), move || {
        (Worker, shared.clone())
    })
}

async fn tree(policy: RestartPolicy) -> Tree {
    let subscriptions = Arc::new(Subscriptions::default());
    let pubsub_slot = Arc::new(Slot::<PubSubMsg>::new());
    let (pubsub, _) = Actor::spawn(None, PubSub, subscriptions.clone())
        .await
        .expect("pubsub starts");
    pubsub_slot.fill(pubsub);
    let events = EventLog::subscribe(&subscriptions, Topic::Actors);

    let (shared, sibling_shared) = (WorkerShared::default(), WorkerShared::default());
    let (worker_slot, sibling_slot) = (Arc::new(Slot::new()), Arc::new(Slot::new()));
    let children = vec![
        worker_spec("worker", &worker_slot, &shared).with_crash_hook(|| WorkerMsg::Crash),
        worker_spec("sibling", &sibling_slot, &sibling_shared),
        worker_spec("pinned", &Arc::new(Slot::new()), &WorkerShared::default()).permanent(),
    ];
    let args = SupervisorArgs {
        children,
        policy,
        publisher: Publisher::new(pubsub_slot.service("pubsub")),
    };
    let (supervisor, _) = within(
        "the supervisor starts",
        Actor::spawn(None, Supervisor, args),
    )
    .await
    .expect("the supervisor starts");
    Tree {
        supervisor,
        worker: worker_slot.service("worker"),
        sibling: sibling_slot.service("sibling"),
        shared,
        sibling_shared,
        events,
    }
}

fn policy(initial_ms: u64, max_ms: u64, stable_after: Duration) -> RestartPolicy {
    RestartPolicy {
        initial_delay: Duration::from_millis(initial_ms),
        max_delay: Duration::from_millis(max_ms),
        stable_after,
    }
}

impl Tree {
    async fn record(&self, name: &str) -> ChildRecord {
        let list = self
            .supervisor
            .call(SupervisorMsg::List, Some(WAIT))
            .await
            .expect("the supervisor runs")
            .success_or(())
            .expect("the supervisor answers List");
        list.into_iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("no record for {name}"))
    }

    async fn restart(&self, name: &str) -> Result<ChildRecord, SupervisorError> {
        let name = name.to_string();
        self.supervisor
            .call(|r| SupervisorMsg::Restart(name, r), Some(WAIT))
            .await
            .expect("the supervisor runs")
            .success_or(())
            .expect("the supervisor answers Restart")
    }

    async fn crash(&self, name: &str) -> Result<(), SupervisorError> {
        let name = name.to_string();
        self.supervisor
            .call(|r| SupervisorMsg::Crash(name, r), Some(WAIT))
            .await
            .expect("the supervisor runs")
            .success_or(())
            .expect("the supervisor answers Crash")
    }

    /// The record carried by the next `actors` event of this kind for `name`.
    async fn next_event(&mut self, name: &str, kind: ActorEventKind) -> ChildRecord {
        let what = format!("{} for {name}", kind.as_str());
        self.events
            .next_where(&what, |e| match e {
                HubEvent::Actor(a) if a.kind == kind && a.record.name == name => {
                    Some(a.record.clone())
                }
                _ => None,
            })
            .await
    }
}

async fn echo(service: &Service<WorkerMsg>, n: u64) -> Result<Echoed, ServiceError> {
    service.call(|r| WorkerMsg::Echo(n, r), WAIT).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_child_is_restarted_alone_and_its_record_says_why() {
    // A long first delay, so the record can be read while the restart is pending.
    let mut t = tree(policy(1_000, 2_000, Duration::from_secs(60))).await;
    let sibling_before = t.sibling.current().expect("sibling runs").get_id();
    assert_eq!(echo(&t.worker, 1).await, Ok((1, 1)));

    let fresh = t.record("worker").await;
    assert_eq!(fresh.status, ChildStatus::Running);
    assert_eq!(
        (fresh.restarts, fresh.crashes, fresh.crash_streak),
        (0, 0, 0)
    );
    assert_eq!(fresh.last_error, None);

    t.crash("worker").await.expect("worker has a crash hook");
    let crashed = t.next_event("worker", ActorEventKind::Crashed).await;
    assert_eq!(crashed.status, ChildStatus::Restarting);
    assert_eq!((crashed.crashes, crashed.crash_streak), (1, 1));
    assert_eq!(crashed.last_backoff_ms, Some(1_000));
    let error = crashed.last_error.clone().expect("the crash is recorded");
    assert!(error.contains("injected crash"), "last_error: {error}");
    let listed = t.record("worker").await;
    assert_eq!(listed.status, ChildStatus::Restarting);
    assert!(
        t.worker.current().is_none(),
        "the slot is empty while restarting"
    );

    // A caller during the backoff waits for the new instance instead of failing.
    assert_eq!(echo(&t.worker, 2).await, Ok((2, 2)));
    let restarted = t.next_event("worker", ActorEventKind::Restarted).await;
    assert_eq!(restarted.status, ChildStatus::Running);
    assert_eq!((restarted.restarts, restarted.crashes), (1, 1));
    assert!(restarted.last_restart_at.is_some());
    assert_eq!(restarted.last_error.as_deref(), Some(error.as_str()));

    // One-for-one: the sibling was neither stopped nor restarted.
    assert_eq!(
        t.sibling.current().expect("sibling runs").get_id(),
        sibling_before
    );
    assert_eq!(t.sibling_shared.starts.load(Ordering::SeqCst), 1);
    let sibling = t.record("sibling").await;
    assert_eq!((sibling.restarts, sibling.crashes), (0, 0));
    assert_eq!(echo(&t.sibling, 3).await, Ok((3, 1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loop_doubles_the_backoff_up_to_the_cap() {
    let mut t = tree(policy(20, 80, Duration::from_secs(60))).await;
    let mut backoffs = Vec::new();
    for streak in 1..=5u32 {
        let crashed_at = Instant::now();
        t.crash("worker").await.expect("worker has a crash hook");
        let crashed = t.next_event("worker", ActorEventKind::Crashed).await;
        assert_eq!(crashed.crash_streak, streak);
        let backoff = crashed.last_backoff_ms.expect("a backoff is recorded");
        backoffs.push(backoff);
        t.next_event("worker", ActorEventKind::Restarted).await;
        assert!(
            crashed_at.elapsed() >= Duration::from_millis(backoff),
            "restarted after {:?}, before its {backoff} ms backoff",
            crashed_at.elapsed()
        );
    }
    assert_eq!(backoffs, vec![20, 40, 80, 80, 80]);
    let record = t.record("worker").await;
    assert_eq!(
        (record.crashes, record.restarts, record.crash_streak),
        (5, 5, 5)
    );
    assert_eq!(echo(&t.worker, 7).await, Ok((7, 6)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_up_longer_than_stable_after_starts_a_new_streak() {
    let stable_after = Duration::from_millis(300);
    let mut t = tree(policy(20, 1_000, stable_after)).await;
    // The first crash comes after the child has been up for longer than `stable_after`.
    tokio::time::sleep(stable_after).await;
    for expected in [(1, 20), (2, 40)] {
        t.crash("worker").await.expect("worker has a crash hook");
        let crashed = t.next_event("worker", ActorEventKind::Crashed).await;
        assert_eq!(
            (crashed.crash_streak, crashed.last_backoff_ms),
            (expected.0, Some(expected.1))
        );
        t.next_event("worker", ActorEventKind::Restarted).await;
    }
    // Staying up is what this test is about, so here the wait is the behaviour itself.
    tokio::time::sleep(stable_after + Duration::from_millis(20)).await;
    t.crash("worker").await.expect("worker has a crash hook");
    let crashed = t.next_event("worker", ActorEventKind::Crashed).await;
    assert_eq!(
        (crashed.crash_streak, crashed.last_backoff_ms),
        (1, Some(20))
    );
    assert_eq!(crashed.crashes, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_start_counts_as_a_crash_and_is_retried_with_backoff() {
    let mut t = tree(policy(50, 1_000, Duration::from_secs(60))).await;
    t.shared.refuse_start.store(true, Ordering::SeqCst);

    let refused = t.restart("worker").await;
    match refused {
        Err(SupervisorError::StartFailed { name, reason }) => {
            assert_eq!(name, "worker");
            assert!(reason.contains("refusing to start"), "reason: {reason}");
        }
        other => panic!("expected StartFailed, got {other:?}"),
    }
    let first = t.next_event("worker", ActorEventKind::Crashed).await;
    assert_eq!(
        (first.status, first.crash_streak),
        (ChildStatus::Restarting, 1)
    );
    assert!(first
        .last_error
        .as_deref()
        .is_some_and(|e| e.contains("refusing to start")));
    // The scheduled retry fails too and lengthens the streak.
    let second = t.next_event("worker", ActorEventKind::Crashed).await;
    assert_eq!(
        (second.crash_streak, second.last_backoff_ms),
        (2, Some(100))
    );

    t.shared.refuse_start.store(false, Ordering::SeqCst);
    let running = t.next_event("worker", ActorEventKind::Restarted).await;
    assert_eq!(running.status, ChildStatus::Running);
    assert!(running.crashes >= 2);
    assert_eq!(running.crash_streak, running.crashes);
    // One restart on request plus one per scheduled attempt, the successful one included.
    assert_eq!(running.restarts, running.crashes + 1);
    assert_eq!(echo(&t.worker, 1).await, Ok((1, 2)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_by_name_while_calls_flow_drops_no_call_and_keeps_send_order() {
    let t = tree(RestartPolicy::default()).await;
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));

    // Callers: each makes calls until told to stop; every answer must echo its request.
    let mut callers = Vec::new();
    for c in 0..4u64 {
        let (service, stop, answered) = (t.worker.clone(), stop.clone(), answered.clone());
        callers.push(tokio::spawn(async move {
            let mut instances = std::collections::BTreeSet::new();
            let mut n = c * 1_000_000;
            while !stop.load(Ordering::SeqCst) {
                let (echoed, instance) = echo(&service, n).await.expect("no call fails");
                assert_eq!(echoed, n);
                instances.insert(instance);
                answered.fetch_add(1, Ordering::SeqCst);
                n += 1;
            }
            instances
        }));
    }
    // A sender of one-way messages: all must arrive, once each, in order.
    let sent = Arc::new(AtomicU64::new(0));
    let sender = {
        let (service, stop, sent) = (t.worker.clone(), stop.clone(), sent.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let n = sent.load(Ordering::SeqCst);
                service
                    .send(WorkerMsg::Record(n), WAIT)
                    .await
                    .expect("no send fails");
                sent.store(n + 1, Ordering::SeqCst);
                tokio::task::yield_now().await;
            }
            sent.load(Ordering::SeqCst)
        })
    };

    for round in 1..=5u32 {
        let (before, sent_before) = (answered.load(Ordering::SeqCst), sent.load(Ordering::SeqCst));
        let record = t.restart("worker").await.expect("worker restarts");
        assert_eq!(
            (record.status, record.restarts),
            (ChildStatus::Running, round)
        );
        let progressed = || answered.load(Ordering::SeqCst) > before + 20;
        common::eventually("calls flow to the new instance", progressed).await;
        // (On a busy machine the sender may not have run since the restart.)
        let sends_went_on = || sent.load(Ordering::SeqCst) > sent_before + 5;
        common::eventually("sends flow to the new instance", sends_went_on).await;
    }
    stop.store(true, Ordering::SeqCst);
    let sends = within("the sender finishes", sender)
        .await
        .expect("sender task");
    let mut seen = std::collections::BTreeSet::new();
    for caller in callers {
        seen.extend(
            within("a caller finishes", caller)
                .await
                .expect("caller task"),
        );
    }
    // A call after the last send is handled after it (one sender's order).
    echo(&t.worker, 0).await.expect("final call");

    assert_eq!(t.shared.starts.load(Ordering::SeqCst), 6);
    assert!(seen.len() >= 2, "calls reached instances {seen:?}");
    let log = t.shared.log.lock().unwrap().clone();
    let numbers: Vec<u64> = log.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        numbers,
        (0..sends).collect::<Vec<_>>(),
        "sends lost, duplicated or reordered"
    );
    let handled_by: std::collections::BTreeSet<u32> = log.iter().map(|(_, i)| *i).collect();
    assert!(
        handled_by.len() >= 2,
        "sends reached instances {handled_by:?} only"
    );
    let record = t.record("worker").await;
    assert_eq!((record.restarts, record.crashes), (5, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_interrupts_queued_callers_and_later_callers_reach_the_new_instance() {
    let mut t = tree(policy(20, 1_000, Duration::from_secs(60))).await;
    let (release, held) = oneshot::channel();
    let hold = WorkerMsg::Hold {
        release: held,
        then_panic: true,
    };
    t.worker.send(hold, WAIT).await.expect("hold delivered");
    // Queued behind the hold, in the instance that is about to crash.
    let queued = t
        .worker
        .request(|r| WorkerMsg::Echo(1, r), WAIT)
        .await
        .expect("echo delivered");
    release.send(()).expect("the worker holds");

    assert_eq!(
        queued.wait(WAIT).await,
        Err(ServiceError::Interrupted("worker"))
    );
    let crashed = t.next_event("worker", ActorEventKind::Crashed).await;
    assert!(crashed
        .last_error
        .as_deref()
        .is_some_and(|e| e.contains("panicked after a hold")));
    assert_eq!(echo(&t.worker, 2).await, Ok((2, 2)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_cannot_restart_unknown_or_permanent_children() {
    let t = tree(RestartPolicy::default()).await;
    assert_eq!(
        t.restart("nobody").await,
        Err(SupervisorError::UnknownActor("nobody".into()))
    );
    assert_eq!(
        t.restart("pinned").await,
        Err(SupervisorError::NotRestartable("pinned".into()))
    );
    assert_eq!(
        t.crash("sibling").await,
        Err(SupervisorError::NoCrashHook("sibling".into()))
    );
    let pinned = t.record("pinned").await;
    assert!(!pinned.restartable);
    assert_eq!((pinned.status, pinned.restarts), (ChildStatus::Running, 0));

    // StopAll stops every child, and callers then find nothing running.
    t.supervisor
        .call(SupervisorMsg::StopAll, Some(WAIT))
        .await
        .expect("the supervisor answers StopAll");
    assert_eq!(t.record("worker").await.status, ChildStatus::Stopped);
    assert!(t.worker.current().is_none());
    let short = Duration::from_millis(50);
    assert_eq!(
        t.worker.call(|r| WorkerMsg::Echo(1, r), short).await,
        Err(ServiceError::Unavailable("worker"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_refused_by_a_drained_instance_is_resent_to_its_successor() {
    // The window of a restart by name, held open: a caller has read the slot just before
    // the supervisor emptied it, and the instance it found has drained and stopped.
    let shared = WorkerShared::default();
    let slot = Slot::new();
    let (old, _) = Actor::spawn(None, Worker, shared.clone())
        .await
        .expect("worker starts");
    slot.fill(old.clone());
    let service = slot.service("worker");
    old.drain_and_wait(Some(WAIT)).await.expect("drained");

    let caller = {
        let service = service.clone();
        tokio::spawn(async move { echo(&service, 1).await })
    };
    let sender = {
        let service = service.clone();
        tokio::spawn(async move { service.send(WorkerMsg::Record(2), WAIT).await })
    };
    let (new, _) = Actor::spawn(None, Worker, shared.clone())
        .await
        .expect("successor starts");
    slot.fill(new);
    assert_eq!(within("the call", caller).await.unwrap(), Ok((1, 2)));
    assert_eq!(within("the send", sender).await.unwrap(), Ok(()));
    echo(&service, 3).await.expect("a later call");
    assert_eq!(shared.log.lock().unwrap().clone(), vec![(2, 2)]);
}
