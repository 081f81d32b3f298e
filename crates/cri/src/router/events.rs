//! containerd's event stream (`containerd.services.events.v1.Events/Subscribe` on the same
//! socket as its CRI service), followed for as long as virtlet runs: what tells the forward
//! cache ([`super::cache`]) that containerd's pods changed. The stream is re-opened after
//! containerd restarts; while it is down nothing is served from the copy.

use std::sync::Arc;
use std::time::{Duration, Instant};

use containerd_client::events::{ContainerCreate, ContainerDelete, TaskExit, TaskStart};
use containerd_client::services::v1::events_client::EventsClient;
use containerd_client::services::v1::{PublishRequest, SubscribeRequest};
use prost::Message;
use tracing::{debug, info, warn};

use super::fresh::Fresh;
use super::remote::Remote;

/// The containerd namespace of CRI's pods and containers.
pub const CRI_NAMESPACE: &str = "k8s.io";

/// The wait before subscribing again after the stream failed.
const RETRY: Duration = Duration::from_millis(500);

/// Follows containerd's events in the background.
pub fn follow(remote: Arc<Remote>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(remote))
}

async fn run(remote: Arc<Remote>) {
    let mut said_down = false;
    let mut round = 0u64;
    loop {
        round += 1;
        let why = follow_once(&remote, round).await;
        remote.cache().fresh(Fresh::disconnected);
        match why {
            Down::Broke(why) => {
                warn!(socket = %remote.socket().display(), error = %why, "containerd's event stream broke: its answers are forwarded, not copied, until it is back");
                said_down = false;
            }
            Down::Unreachable(why) if !said_down => {
                warn!(socket = %remote.socket().display(), error = %why, "cannot follow containerd's events: its answers are forwarded, not copied, until they can be followed");
                said_down = true;
            }
            Down::Unreachable(_) => {}
        }
        tokio::time::sleep(RETRY).await;
    }
}

enum Down {
    /// The stream was never seen live.
    Unreachable(String),
    /// It was, then ended.
    Broke(String),
}

/// Subscribes and follows until the stream ends. containerd sends a stream's headers with
/// its first event, and a subscription made while no event comes is not known to be live:
/// virtlet publishes its own sync event (topic [`SYNC_TOPIC`], ignored by containerd's CRI
/// plugin) until it comes back, and trusts the stream from then on.
async fn follow_once(remote: &Remote, round: u64) -> Down {
    let nonce = format!("{}-{round}", std::process::id());
    let request = SubscribeRequest {
        filters: vec![format!("namespace=={CRI_NAMESPACE}")],
    };
    let mut subscriber = EventsClient::new(remote.channel());
    let subscribe = subscriber.subscribe(request);
    let publisher = EventsClient::new(remote.channel());
    let live = std::sync::atomic::AtomicBool::new(false);
    let publish = async {
        while !live.load(std::sync::atomic::Ordering::Relaxed) {
            if let Err(s) = publish_sync(publisher.clone(), &nonce).await {
                // the subscription's own failure is what gets reported
                debug!(error = %s.message(), "cannot publish virtlet's sync event to containerd");
            }
            tokio::time::sleep(SYNC_EVERY).await;
        }
    };
    let follow = async {
        let mut stream = match subscribe.await {
            Ok(s) => s.into_inner(),
            Err(s) => return Down::Unreachable(s.message().to_owned()),
        };
        loop {
            let envelope = match stream.message().await {
                Ok(Some(e)) => e,
                Ok(None) if live.load(std::sync::atomic::Ordering::Relaxed) => {
                    return Down::Broke("the stream ended".to_owned());
                }
                Ok(None) => return Down::Unreachable("the stream ended".to_owned()),
                Err(s) if live.load(std::sync::atomic::Ordering::Relaxed) => {
                    return Down::Broke(s.message().to_owned());
                }
                Err(s) => return Down::Unreachable(s.message().to_owned()),
            };
            let Some(event) = envelope.event else {
                continue;
            };
            if envelope.topic == SYNC_TOPIC {
                if event.value == nonce.as_bytes()
                    && !live.swap(true, std::sync::atomic::Ordering::Relaxed)
                {
                    remote.cache().fresh(|f| f.connected(Instant::now()));
                    info!(socket = %remote.socket().display(), "following containerd's events: its answers to the kubelet's lists and Status are served from virtlet's copy until they change");
                }
                continue;
            }
            match subject(&envelope.topic, &event.value) {
                Ok(id) => {
                    debug!(topic = %envelope.topic, id = %id, "containerd event");
                    remote
                        .cache()
                        .fresh(|f| f.event(&envelope.topic, &id, Instant::now()));
                }
                Err(e) => {
                    warn!(topic = %envelope.topic, error = %e, "cannot read a containerd event: every copy of its answers is dropped");
                    remote.cache().fresh(|f| f.connected(Instant::now()));
                }
            }
        }
    };
    tokio::pin!(follow);
    tokio::select! {
        down = &mut follow => down,
        () = publish => follow.await, // live: only the stream's end matters now
    }
}

/// The topic of virtlet's own sync events (see [`follow_once`]).
pub const SYNC_TOPIC: &str = "/virtlet/sync";

/// How often a sync event is published until one comes back.
const SYNC_EVERY: Duration = Duration::from_millis(200);

async fn publish_sync(
    mut client: EventsClient<tonic::transport::Channel>,
    nonce: &str,
) -> Result<(), tonic::Status> {
    let mut request = tonic::Request::new(PublishRequest {
        topic: SYNC_TOPIC.to_owned(),
        event: Some(prost_types::Any {
            type_url: "virtlet.sync".to_owned(),
            value: nonce.as_bytes().to_vec(),
        }),
    });
    request.metadata_mut().insert(
        "containerd-namespace",
        tonic::metadata::MetadataValue::from_static(CRI_NAMESPACE),
    );
    client.publish(request).await.map(|_| ())
}

/// The container or sandbox ID an event is about, empty when it changes no list entry (an
/// exec'd process's exit, events without an expectation).
fn subject(topic: &str, payload: &[u8]) -> Result<String, prost::DecodeError> {
    Ok(match topic {
        "/tasks/start" => TaskStart::decode(payload)?.container_id,
        "/tasks/exit" => {
            let e = TaskExit::decode(payload)?;
            if e.id == e.container_id {
                e.container_id
            } else {
                String::new()
            }
        }
        "/containers/create" => ContainerCreate::decode(payload)?.id,
        "/containers/delete" => ContainerDelete::decode(payload)?.id,
        _ => String::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_of_events() {
        let exit = |container: &str, id: &str| {
            TaskExit {
                container_id: container.into(),
                id: id.into(),
                ..Default::default()
            }
            .encode_to_vec()
        };
        assert_eq!(
            subject("/tasks/exit", &exit("c1", "c1")).ok().as_deref(),
            Some("c1")
        );
        assert_eq!(
            subject("/tasks/exit", &exit("c1", "exec-7"))
                .ok()
                .as_deref(),
            Some(""),
            "an exec'd process's exit changes no list"
        );
        let start = TaskStart {
            container_id: "p1".into(),
            pid: 9,
        };
        assert_eq!(
            subject("/tasks/start", &start.encode_to_vec())
                .ok()
                .as_deref(),
            Some("p1")
        );
        let delete = ContainerDelete { id: "c2".into() };
        assert_eq!(
            subject("/containers/delete", &delete.encode_to_vec())
                .ok()
                .as_deref(),
            Some("c2")
        );
        assert_eq!(
            subject("/snapshot/prepare", b"\xff").ok().as_deref(),
            Some("")
        );
        assert!(subject("/tasks/start", b"\xff\xff").is_err());
    }
}
