//! ListContainers and ListPodSandbox answers encoded straight from the manager's records.
//!
//! The kubelet lists every second. With 1000 pods, building `api::Container` values first
//! (ten owned strings and two maps each), encoding them and dropping them again cost about
//! 4 ms per call, mostly copies and allocator work. Here each record is written into the
//! protobuf wire form from borrowed fields, under the manager's read lock, and the bytes go
//! out through [`PreEncodedCodec`] as they are. The output decodes to exactly what
//! [`container`](crate::runtime) / the generated encoder would give; tests check that.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::{BufMut, Bytes, BytesMut};
use prost::encoding::{self, WireType};
use tonic::Status;
use tonic::codec::{Codec, EncodeBuf, Encoder};
use virtlet_manager::{ContainerRecord, SandboxRecord, container_cri_state, sandbox_cri_state};

type Labels = HashMap<String, String>;

fn string_len(tag: u32, s: &str) -> usize {
    if s.is_empty() {
        0
    } else {
        encoding::key_len(tag) + encoding::encoded_len_varint(s.len() as u64) + s.len()
    }
}

fn put_string(tag: u32, s: &str, buf: &mut impl BufMut) {
    if !s.is_empty() {
        encoding::encode_key(tag, WireType::LengthDelimited, buf);
        encoding::encode_varint(s.len() as u64, buf);
        buf.put_slice(s.as_bytes());
    }
}

fn int_len(tag: u32, v: i64) -> usize {
    if v == 0 {
        0
    } else {
        encoding::key_len(tag) + encoding::encoded_len_varint(v as u64)
    }
}

/// int32 and enum values are sign-extended to 64 bits on the wire, like int64.
fn put_int(tag: u32, v: i64, buf: &mut impl BufMut) {
    if v != 0 {
        encoding::encode_key(tag, WireType::Varint, buf);
        encoding::encode_varint(v as u64, buf);
    }
}

fn message_len<M: prost::Message>(tag: u32, m: Option<&M>) -> usize {
    m.map_or(0, |m| encoding::message::encoded_len(tag, m))
}

fn put_message<M: prost::Message>(tag: u32, m: Option<&M>, buf: &mut impl BufMut) {
    if let Some(m) = m {
        encoding::message::encode(tag, m, buf);
    }
}

fn map_len(tag: u32, map: &Labels) -> usize {
    encoding::hash_map::encoded_len(
        encoding::string::encoded_len,
        encoding::string::encoded_len,
        tag,
        map,
    )
}

fn put_map(tag: u32, map: &Labels, buf: &mut impl BufMut) {
    encoding::hash_map::encode(
        encoding::string::encode,
        encoding::string::encoded_len,
        encoding::string::encode,
        encoding::string::encoded_len,
        tag,
        map,
        buf,
    );
}

/// The body of a `runtime.v1.Container` for `c` (fields 1–10, as `container()` fills them).
fn container_body_len(c: &ContainerRecord) -> usize {
    string_len(1, &c.id)
        + string_len(2, &c.sandbox_id)
        + message_len(3, c.config.metadata.as_ref())
        + message_len(4, c.config.image.as_ref())
        + string_len(5, &c.image_ref)
        + int_len(6, i64::from(container_cri_state(c.state)))
        + int_len(7, c.created_at_ns)
        + map_len(8, &c.config.labels)
        + map_len(9, &c.config.annotations)
        + string_len(10, &c.image_id)
}

fn put_container_body(c: &ContainerRecord, buf: &mut impl BufMut) {
    put_string(1, &c.id, buf);
    put_string(2, &c.sandbox_id, buf);
    put_message(3, c.config.metadata.as_ref(), buf);
    put_message(4, c.config.image.as_ref(), buf);
    put_string(5, &c.image_ref, buf);
    put_int(6, i64::from(container_cri_state(c.state)), buf);
    put_int(7, c.created_at_ns, buf);
    put_map(8, &c.config.labels, buf);
    put_map(9, &c.config.annotations, buf);
    put_string(10, &c.image_id, buf);
}

/// The body of a `runtime.v1.PodSandbox` for `s` (fields 1–7).
fn sandbox_body_len(s: &SandboxRecord) -> usize {
    string_len(1, &s.id)
        + message_len(2, s.config.metadata.as_ref())
        + int_len(3, i64::from(sandbox_cri_state(s.state)))
        + int_len(4, s.created_at_ns)
        + map_len(5, &s.config.labels)
        + map_len(6, &s.config.annotations)
        + string_len(7, &s.runtime_handler)
}

fn put_sandbox_body(s: &SandboxRecord, buf: &mut impl BufMut) {
    put_string(1, &s.id, buf);
    put_message(2, s.config.metadata.as_ref(), buf);
    put_int(3, i64::from(sandbox_cri_state(s.state)), buf);
    put_int(4, s.created_at_ns, buf);
    put_map(5, &s.config.labels, buf);
    put_map(6, &s.config.annotations, buf);
    put_string(7, &s.runtime_handler, buf);
}

/// The last unfiltered answer of one List call, kept with the generation of the records it
/// was built from: the kubelet relists every second, and between pod changes the answer is
/// the same bytes.
#[derive(Default)]
pub struct ListCache {
    last: Mutex<Option<(u64, Bytes)>>,
    /// The size of the last answer built, so the next one is written without regrowing.
    size_hint: AtomicUsize,
}

impl ListCache {
    /// The answer: the cached one when `unfiltered` and `generation()` still matches, else
    /// one built by `build`, which returns the generation of the records it wrote.
    pub fn answer(
        &self,
        unfiltered: bool,
        generation: impl FnOnce() -> u64,
        build: impl FnOnce(&mut RepeatedWriter) -> u64,
    ) -> Bytes {
        if unfiltered {
            let current = generation();
            if let Some((g, bytes)) = &*lock(&self.last)
                && *g == current
            {
                return bytes.clone();
            }
        }
        let mut w = RepeatedWriter {
            buf: BytesMut::with_capacity(self.size_hint.load(Ordering::Relaxed)),
        };
        let built_from = build(&mut w);
        let bytes = w.finish();
        if unfiltered {
            self.size_hint.store(bytes.len(), Ordering::Relaxed);
            *lock(&self.last) = Some((built_from, bytes.clone()));
        }
        bytes
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Builds a response whose only field is `repeated <item> = 1`, one record at a time.
#[derive(Default)]
pub struct RepeatedWriter {
    buf: BytesMut,
}

impl RepeatedWriter {
    fn item(&mut self, len: usize, body: impl FnOnce(&mut BytesMut)) {
        self.buf
            .reserve(encoding::key_len(1) + encoding::encoded_len_varint(len as u64) + len);
        encoding::encode_key(1, WireType::LengthDelimited, &mut self.buf);
        encoding::encode_varint(len as u64, &mut self.buf);
        let start = self.buf.len();
        body(&mut self.buf);
        debug_assert_eq!(self.buf.len() - start, len, "encoded length mismatch");
    }

    /// Appends `c` as a `ListContainersResponse.containers` entry.
    pub fn container(&mut self, c: &ContainerRecord) {
        self.item(container_body_len(c), |b| put_container_body(c, b));
    }

    /// Appends `s` as a `ListPodSandboxResponse.items` entry.
    pub fn sandbox(&mut self, s: &SandboxRecord) {
        self.item(sandbox_body_len(s), |b| put_sandbox_body(s, b));
    }

    pub fn finish(self) -> Bytes {
        self.buf.freeze()
    }
}

/// A gRPC codec whose requests are ordinary prost messages and whose responses are already
/// encoded message bytes.
pub struct PreEncodedCodec<Req>(PhantomData<fn() -> Req>);

impl<Req> Default for PreEncodedCodec<Req> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<Req: prost::Message + Default + Send + 'static> Codec for PreEncodedCodec<Req> {
    type Encode = Bytes;
    type Decode = Req;
    type Encoder = BytesEncoder;
    type Decoder = tonic_prost::ProstDecoder<Req>;

    fn encoder(&mut self) -> Self::Encoder {
        BytesEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstDecoder::default()
    }
}

pub struct BytesEncoder;

impl Encoder for BytesEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use k8s_cri::v1 as api;
    use prost::Message;
    use std::path::PathBuf;
    use virtlet_core::state::{ContainerState, SandboxState};

    fn labels(n: usize, tag: &str) -> Labels {
        (0..n)
            .map(|i| {
                (
                    format!("{tag}/k{i}"),
                    format!("välue-{i}-{}", "x".repeat(i * 40)),
                )
            })
            .collect()
    }

    fn container_record(i: usize, state: ContainerState) -> ContainerRecord {
        ContainerRecord {
            id: if i == 0 {
                String::new()
            } else {
                format!("{i:064x}")
            },
            sandbox_id: format!("{:064x}", i * 7),
            state,
            config: api::ContainerConfig {
                metadata: (i % 3 != 1).then(|| api::ContainerMetadata {
                    name: format!("vm{i}"),
                    attempt: i as u32,
                }),
                image: (i % 4 != 2).then(|| api::ImageSpec {
                    image: "virtlet.cloud/example.com/cirros.img".into(),
                    annotations: labels(i % 3, "img"),
                    ..Default::default()
                }),
                labels: labels(i % 5, "app.kubernetes.io"),
                annotations: labels((i * 3) % 7, "virtlet.cloud"),
                command: vec!["ignored".into()],
                ..Default::default()
            },
            image_ref: if i.is_multiple_of(2) {
                String::new()
            } else {
                format!("x@sha256:{i:064x}")
            },
            image_id: format!("sha256:{i:064x}"),
            domain_name: "virtlet-x".into(),
            root_target: "vda".into(),
            console_socket: None,
            seed: None,
            log_path: Some(PathBuf::from("/var/log/pods/x/vm/0.log")),
            created_at_ns: match i % 3 {
                0 => 0,
                1 => -5,
                _ => 1_764_000_000_000_000_000 + i as i64,
            },
            started_at_ns: 7,
            finished_at_ns: 8,
            exit: None,
        }
    }

    fn sandbox_record(i: usize, state: SandboxState) -> SandboxRecord {
        SandboxRecord {
            id: format!("{i:064x}"),
            state,
            config: api::PodSandboxConfig {
                metadata: i.is_multiple_of(2).then(|| api::PodSandboxMetadata {
                    name: format!("pod{i}"),
                    uid: format!("uid-{i}"),
                    namespace: "default".into(),
                    attempt: i as u32,
                }),
                labels: labels(i % 4, "app"),
                annotations: labels(i % 6, "kubernetes.io"),
                hostname: "ignored".into(),
                ..Default::default()
            },
            runtime_handler: if i % 2 == 1 {
                "virtlet".into()
            } else {
                String::new()
            },
            created_at_ns: i as i64 * 1000,
            netns: PathBuf::from("/run/netns/x"),
            root_disk: None,
            root_disks: Vec::new(),
            network_owner: None,
            network: None,
        }
    }

    #[test]
    fn containers_decode_to_what_the_generated_encoder_would_send() {
        let states = [
            ContainerState::Created,
            ContainerState::Running,
            ContainerState::Exited,
        ];
        let records: Vec<_> = (0..60)
            .map(|i| container_record(i, states[i % states.len()]))
            .collect();
        let mut w = RepeatedWriter::default();
        records.iter().for_each(|c| w.container(c));
        let bytes = w.finish();
        let reference = api::ListContainersResponse {
            containers: records.iter().map(crate::convert::container).collect(),
        };
        let decoded = api::ListContainersResponse::decode(bytes.clone()).unwrap();
        assert_eq!(decoded, reference);
        assert_eq!(bytes.len(), reference.encoded_len());
    }

    #[test]
    fn sandboxes_decode_to_what_the_generated_encoder_would_send() {
        let states = [SandboxState::Ready, SandboxState::NotReady];
        let records: Vec<_> = (0..40).map(|i| sandbox_record(i, states[i % 2])).collect();
        let mut w = RepeatedWriter::default();
        records.iter().for_each(|s| w.sandbox(s));
        let bytes = w.finish();
        let reference = api::ListPodSandboxResponse {
            items: records.iter().map(crate::convert::pod_sandbox).collect(),
        };
        let decoded = api::ListPodSandboxResponse::decode(bytes.clone()).unwrap();
        assert_eq!(decoded, reference);
        assert_eq!(bytes.len(), reference.encoded_len());
    }

    #[test]
    fn an_empty_list_is_an_empty_message() {
        assert!(RepeatedWriter::default().finish().is_empty());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod cache_tests {
    use super::*;

    fn build(marker: u8, generation: u64) -> impl FnOnce(&mut RepeatedWriter) -> u64 {
        move |w| {
            w.buf.put_u8(marker);
            generation
        }
    }

    #[test]
    fn unfiltered_answers_are_reused_until_the_generation_moves() {
        let cache = ListCache::default();
        let a = cache.answer(true, || 0, build(1, 7));
        assert_eq!(&a[..], [1]);
        // The generation the builder saw (7) is what counts, not the one read before.
        let b = cache.answer(true, || 7, build(2, 7));
        assert_eq!(&b[..], [1], "the same generation reuses the answer");
        assert_eq!(a.as_ptr(), b.as_ptr(), "reused without a copy");
        let c = cache.answer(true, || 8, build(3, 8));
        assert_eq!(&c[..], [3], "a new generation rebuilds");
    }

    #[test]
    fn filtered_answers_are_never_cached_nor_served_from_the_cache() {
        let cache = ListCache::default();
        cache.answer(true, || 0, build(1, 5));
        let f = cache.answer(false, || 5, build(9, 5));
        assert_eq!(&f[..], [9]);
        let u = cache.answer(true, || 5, build(2, 5));
        assert_eq!(
            &u[..],
            [1],
            "a filtered answer did not replace the cached one"
        );
    }
}
