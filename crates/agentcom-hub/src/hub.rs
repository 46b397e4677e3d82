//! [`Hub`]: starting the supervision tree, and the operator's view of it.

use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use agentcom_core::Millis;
use agentcom_store::{Engine, StoreReader};
use ractor::{Actor, ActorRef};

use crate::agents::{AgentTable, Agents, AgentsMsg, FsmServices};
use crate::analytics::{Analytics, AnalyticsMsg, AnalyticsTable};
use crate::auth::{AuthActor, AuthArgs, AuthMsg};
use crate::backup::{BackupActor, BackupArgs, BackupMsg};
use crate::channels::{Channels, ChannelsArgs, ChannelsMsg};
use crate::config::{ConfigActor, ConfigArgs, ConfigMsg};
use crate::dashboard::{Dashboard, DashboardArgs, DashboardMsg};
use crate::feed::{DashboardFeed, FeedArgs, FeedMsg};
use crate::history::{HistoryArgs, HistoryMsg, MessageHistory};
use crate::mailbox::{Mailbox, MailboxArgs, MailboxMsg};
use crate::notifier::{Notifier, NotifierArgs, NotifierMsg};
use crate::presence::{Presence, PresenceArgs, PresenceMsg, PresenceTable};
use crate::pubsub::{PubSub, PubSubMsg, Publisher, Subscriptions};
use crate::reaper::{Reaper, ReaperArgs, ReaperMsg};
use crate::scheduler::{Scheduler, SchedulerArgs, SchedulerMsg};
use crate::service::{ServiceError, Slot};
use crate::services::Services;
use crate::sessions::{
    self, CloseReason, SessionArgs, SessionCounts, SessionMsg, Sessions, SessionsMsg,
};
use crate::store::{StoreActor, StoreArgs, StoreMsg};
use crate::supervisor::{
    ChildRecord, ChildSpec, Supervisor, SupervisorArgs, SupervisorError, SupervisorMsg,
};
use crate::task_queue::{TaskMsg, TaskQueue, TaskQueueArgs};
use crate::threads::{Threads, ThreadsArgs, ThreadsMsg};
use crate::{now_ms, HubError, HubSettings, CALL_TIMEOUT};

/// A running hub: the supervision tree and handles to its services.
#[derive(Clone)]
pub struct Hub {
    supervisor: ActorRef<SupervisorMsg>,
    engine: Arc<dyn Engine>,
    /// Shared: every session and the HTTP server hold a handle, and the struct is large.
    services: Arc<Services>,
    started_at: Millis,
}

impl Deref for Hub {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.services
    }
}

fn slot<M: ractor::Message>() -> Arc<Slot<M>> {
    Arc::new(Slot::new())
}

impl Hub {
    /// Start every actor over an opened engine, in dependency order.
    pub async fn start(engine: Arc<dyn Engine>, settings: HubSettings) -> Result<Hub, HubError> {
        let reader = StoreReader::new(engine.clone());
        let (store_s, pubsub_s, config_s, auth_s) = (
            slot::<StoreMsg>(),
            slot::<PubSubMsg>(),
            slot::<ConfigMsg>(),
            slot::<AuthMsg>(),
        );
        let (presence_s, mailbox_s, channels_s) = (
            slot::<PresenceMsg>(),
            slot::<MailboxMsg>(),
            slot::<ChannelsMsg>(),
        );
        let (history_s, threads_s, analytics_s) = (
            slot::<HistoryMsg>(),
            slot::<ThreadsMsg>(),
            slot::<AnalyticsMsg>(),
        );
        let (reaper_s, sessions_s) = (slot::<ReaperMsg>(), slot::<SessionsMsg>());
        let backup_s = slot::<BackupMsg>();
        let notifier_s = slot::<NotifierMsg>();
        let dashboard_s = slot::<DashboardMsg>();
        let feed_s = slot::<FeedMsg>();
        let (tasks_s, agents_s, scheduler_s) = (
            slot::<TaskMsg>(),
            slot::<AgentsMsg>(),
            slot::<SchedulerMsg>(),
        );
        let publisher = Publisher::new(pubsub_s.service("pubsub"));
        let presence_table = Arc::new(PresenceTable::default());
        let agent_table = Arc::new(AgentTable::new(FsmServices {
            publisher: publisher.clone(),
            presence: presence_table.clone(),
            task_queue: tasks_s.service("task_queue"),
            scheduler: scheduler_s.service("scheduler"),
            accept_timeout: settings.accept_timeout,
        }));
        let services = Arc::new(Services {
            settings: settings.clone(),
            reader: reader.clone(),
            publisher,
            subscriptions: Arc::new(Subscriptions::default()),
            presence_table,
            analytics_table: Arc::new(AnalyticsTable::default()),
            store: store_s.service("store"),
            config: config_s.service("config"),
            auth: auth_s.service("auth"),
            presence: presence_s.service("presence"),
            mailbox: mailbox_s.service("mailbox"),
            channels: channels_s.service("channels"),
            history: history_s.service("message_history"),
            threads: threads_s.service("threads"),
            analytics: analytics_s.service("analytics"),
            sessions: sessions_s.service("sessions"),
            agent_table,
            agents: agents_s.service("agents"),
            task_queue: tasks_s.service("task_queue"),
            scheduler: scheduler_s.service("scheduler"),
            backup: backup_s.service("backup"),
            notifier: notifier_s.service("notifier"),
            dashboard: dashboard_s.service("dashboard_state"),
            task_latency: Arc::default(),
            supervisor: Arc::new(std::sync::OnceLock::new()),
            engine: engine.clone(),
            shutting_down: Arc::default(),
            rate_limits: Arc::new(crate::rate::CallerLimits::new(
                settings.rate_limit,
                settings.rate_limit_admin,
            )),
        });

        let s = services.clone();
        let store_args = StoreArgs::new(engine.clone(), settings.durability);
        let mut config = ChildSpec::new("config", "service", config_s, {
            let s = s.clone();
            move || {
                (
                    ConfigActor,
                    ConfigArgs {
                        reader: s.reader.clone(),
                        store: s.store.clone(),
                    },
                )
            }
        });
        let mut mailbox = ChildSpec::new("mailbox", "service", mailbox_s, {
            let s = s.clone();
            move || {
                (
                    Mailbox,
                    MailboxArgs {
                        reader: s.reader.clone(),
                        store: s.store.clone(),
                        config: s.config.clone(),
                        quota_bytes: s.settings.mailbox_quota_bytes,
                    },
                )
            }
        });
        if settings.test_hooks {
            config = config.with_crash_hook(|| ConfigMsg::Crash);
            mailbox = mailbox.with_crash_hook(|| MailboxMsg::Crash);
        }
        let children = vec![
            ChildSpec::new("store", "service", store_s, move || {
                (StoreActor, store_args.clone())
            }),
            ChildSpec::new("pubsub", "service", pubsub_s, {
                let subs = s.subscriptions.clone();
                move || (PubSub, subs.clone())
            }),
            config,
            ChildSpec::new("auth", "service", auth_s, {
                let s = s.clone();
                move || {
                    (
                        AuthActor,
                        AuthArgs {
                            reader: s.reader.clone(),
                            store: s.store.clone(),
                            session_ttl: s.settings.dashboard_session_ttl.as_millis() as u64,
                        },
                    )
                }
            }),
            ChildSpec::new("presence", "service", presence_s, {
                let s = s.clone();
                move || {
                    (
                        Presence,
                        PresenceArgs {
                            table: s.presence_table.clone(),
                            publisher: s.publisher.clone(),
                        },
                    )
                }
            }),
            ChildSpec::new("analytics", "service", analytics_s, {
                let table = s.analytics_table.clone();
                move || (Analytics, table.clone())
            }),
            ChildSpec::new("message_history", "service", history_s, {
                let s = s.clone();
                move || {
                    (
                        MessageHistory,
                        HistoryArgs {
                            reader: s.reader.clone(),
                            store: s.store.clone(),
                            max_bytes: s.settings.history_max_bytes,
                        },
                    )
                }
            }),
            ChildSpec::new("threads", "service", threads_s, {
                let s = s.clone();
                move || {
                    (
                        Threads,
                        ThreadsArgs {
                            reader: s.reader.clone(),
                            store: s.store.clone(),
                            limits: s.settings.thread_limits,
                        },
                    )
                }
            }),
            mailbox,
            ChildSpec::new("channels", "service", channels_s, {
                let s = s.clone();
                move || {
                    let args = ChannelsArgs {
                        reader: s.reader.clone(),
                        store: s.store.clone(),
                        mailbox: s.mailbox.clone(),
                        presence: s.presence_table.clone(),
                        publisher: s.publisher.clone(),
                        quota_bytes: s.settings.channel_quota_bytes,
                    };
                    (Channels, args)
                }
            }),
            ChildSpec::new("task_queue", "service", tasks_s, {
                let s = s.clone();
                move || {
                    let args = TaskQueueArgs {
                        latency: s.task_latency.clone(),
                        reader: s.reader.clone(),
                        store: s.store.clone(),
                        publisher: s.publisher.clone(),
                        agents: s.agent_table.clone(),
                        sweep_interval: s.settings.task_sweep_interval,
                        completed_ttl: s.settings.completed_task_ttl,
                    };
                    (TaskQueue, args)
                }
            }),
            // Not restartable by operators: a disconnect lost from its mailbox would leave
            // the agent's FSM and tasks behind.
            ChildSpec::new("agents", "service", agents_s, {
                let s = s.clone();
                move || (Agents, s.agent_table.clone())
            })
            .permanent(),
            ChildSpec::new("scheduler", "service", scheduler_s, {
                let s = s.clone();
                move || {
                    let args = SchedulerArgs {
                        agents: s.agent_table.clone(),
                        task_queue: s.task_queue.clone(),
                        subscriptions: s.subscriptions.clone(),
                        sweep_interval: s.settings.task_sweep_interval,
                        stuck_after: s.settings.stuck_task_after,
                        rejection_ttl: s.settings.accept_timeout,
                        test_assign_pause: s.settings.test_assign_pause,
                    };
                    (Scheduler, args)
                }
            }),
            ChildSpec::new("notifier", "service", notifier_s, {
                let s = s.clone();
                move || {
                    let args = NotifierArgs {
                        reader: s.reader.clone(),
                        store: s.store.clone(),
                        subscriptions: s.subscriptions.clone(),
                        dashboard: s.dashboard.clone(),
                        health_interval: s.settings.push_health_interval,
                        subject: s.settings.push_subject.clone(),
                        shutting_down: s.shutting_down.clone(),
                    };
                    (Notifier, args)
                }
            }),
            ChildSpec::new("backup", "service", backup_s, {
                let s = s.clone();
                move || {
                    let args = BackupArgs {
                        engine: s.engine.clone(),
                        store: s.store.clone(),
                        publisher: s.publisher.clone(),
                        backup_dir: s.settings.backup_dir.clone(),
                        keep: s.settings.backup_keep,
                        interval: s.settings.backup_interval,
                        test_pause: s.settings.test_backup_pause,
                        compact_when_fragmented: s.settings.compact_when_fragmented,
                        fragmentation_floor: s.settings.fragmentation_floor,
                    };
                    (BackupActor, args)
                }
            }),
            ChildSpec::new("dashboard_state", "service", dashboard_s, {
                let s = s.clone();
                move || {
                    let args = DashboardArgs {
                        services: s.clone(),
                        sample_interval: s.settings.queue_sample_interval,
                    };
                    (Dashboard, args)
                }
            }),
            ChildSpec::new("dashboard_feed", "service", feed_s, {
                let s = s.clone();
                move || {
                    let args = FeedArgs {
                        subscriptions: s.subscriptions.clone(),
                        publisher: s.publisher.clone(),
                        flush_interval: s.settings.dashboard_flush_interval,
                    };
                    (DashboardFeed, args)
                }
            }),
            ChildSpec::new("reaper", "service", reaper_s, {
                let s = s.clone();
                move || {
                    let args = ReaperArgs {
                        presence: s.presence_table.clone(),
                        interval: s.settings.reaper_interval,
                        ttl: s.settings.presence_ttl,
                    };
                    (Reaper, args)
                }
            }),
            ChildSpec::new("sessions", "supervisor", sessions_s, {
                let s = s.clone();
                move || (Sessions, s.clone())
            })
            .permanent(),
        ];

        let (supervisor, _) = Actor::spawn(
            None,
            Supervisor,
            SupervisorArgs {
                children,
                policy: settings.restart_policy,
                publisher: services.publisher.clone(),
            },
        )
        .await
        .map_err(|e| SupervisorError::StartFailed {
            name: "supervisor".into(),
            reason: e.to_string(),
        })?;

        let _ = services.supervisor.set(supervisor.clone());
        Ok(Hub {
            supervisor,
            engine,
            services,
            started_at: now_ms(),
        })
    }

    pub fn settings(&self) -> &HubSettings {
        &self.services.settings
    }

    pub fn started_at(&self) -> Millis {
        self.started_at
    }

    async fn ask_supervisor<R: Send + 'static>(
        &self,
        make: impl FnOnce(ractor::RpcReplyPort<R>) -> SupervisorMsg,
    ) -> Result<R, HubError> {
        Ok(self
            .supervisor
            .call(make, Some(CALL_TIMEOUT))
            .await
            .map_err(|_| ServiceError::Unavailable("supervisor"))?
            .success_or(ServiceError::Timeout("supervisor"))?)
    }

    /// The supervision tree, one record per supervised actor.
    pub async fn actors(&self) -> Result<Vec<ChildRecord>, HubError> {
        self.ask_supervisor(SupervisorMsg::List).await
    }

    /// Restart one actor by name; returns once the new instance runs.
    pub async fn restart_actor(&self, name: &str) -> Result<ChildRecord, HubError> {
        let name = name.to_string();
        Ok(self
            .ask_supervisor(|r| SupervisorMsg::Restart(name, r))
            .await??)
    }

    /// Restart every restartable actor, in start (dependency) order (route 30, F25).
    pub async fn reset(&self) -> Result<Vec<&'static str>, HubError> {
        let mut restarted = Vec::new();
        for record in self.actors().await? {
            if record.restartable {
                self.restart_actor(record.name).await?;
                restarted.push(record.name);
            }
        }
        Ok(restarted)
    }

    /// Test hook: make the named actor crash. Refused unless `test_hooks` is set.
    pub async fn crash_actor(&self, name: &str) -> Result<(), HubError> {
        if !self.settings().test_hooks {
            return Err(SupervisorError::NoCrashHook(name.to_string()).into());
        }
        let name = name.to_string();
        Ok(self
            .ask_supervisor(|r| SupervisorMsg::Crash(name, r))
            .await??)
    }

    /// Open a websocket session actor.
    pub async fn open_session(&self, args: SessionArgs) -> Result<ActorRef<SessionMsg>, HubError> {
        let reply = self
            .sessions
            .call(|r| SessionsMsg::Open(args, r), CALL_TIMEOUT)
            .await?;
        reply.map_err(|reason| {
            HubError::Supervisor(SupervisorError::StartFailed {
                name: "session".into(),
                reason,
            })
        })
    }

    pub async fn session_counts(&self) -> Result<SessionCounts, HubError> {
        Ok(self.sessions.call(SessionsMsg::Count, CALL_TIMEOUT).await?)
    }

    /// Close every websocket (1001), stop every actor after it finishes its queued
    /// messages, and flush the store.
    pub async fn shutdown(&self) {
        self.shutting_down
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let reason = CloseReason::new(sessions::close_code::GOING_AWAY, "hub shutting down");
        let _ = self
            .sessions
            .call(|r| SessionsMsg::CloseAll(reason, r), Duration::from_secs(5))
            .await;
        // Sessions stop themselves once their close frame is queued; wait for them (briefly)
        // so that stopping the actors below cannot cut a close frame off.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while tokio::time::Instant::now() < deadline {
            match self.session_counts().await {
                Ok(c) if c.agent + c.dashboard > 0 => {
                    tokio::time::sleep(Duration::from_millis(10)).await
                }
                _ => break,
            }
        }
        let _ = self
            .supervisor
            .call(SupervisorMsg::StopAll, Some(Duration::from_secs(30)))
            .await;
        self.supervisor.stop(None);
        if let Err(e) = self.engine.flush() {
            tracing::error!(error = %e, "final flush failed");
        }
    }
}
