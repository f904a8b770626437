//! One upstream fetch shared by every client that wants it.
//!
//! A [`Fill`] is produced by a single task that reads the upstream response
//! and consumed by any number of [`Reader`]s, each of which streams the
//! body to its client as it arrives (request coalescing, design §2). While
//! the body fits the object-size limit every chunk is kept, so late joiners
//! can start from the first byte and the finished body can be stored. Past
//! the limit the fill stops keeping chunks, refuses new readers, drops what
//! every reader has consumed and makes the producer wait for the slowest
//! reader, so memory stays bounded whatever the body size.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, StatusCode};
use http_body_util::BodyExt;
use tokio::sync::watch;

use super::upstream::{BoxError, UpstreamBody, UpstreamError};
use crate::policy::response::{NotStorable, ResponsePolicy};
use crate::store::CachedObject;

/// Bytes a producer may run ahead of its slowest reader once it no longer
/// keeps the body.
const STREAM_WINDOW: usize = 256 * 1024;

/// The response head of a fetch, as every reader sees it.
#[derive(Debug)]
pub struct FetchedHead {
    pub status: StatusCode,
    /// The fields as received (hop-by-hop removed): what the client whose
    /// request caused the fetch gets, Set-Cookie included.
    pub headers: HeaderMap,
    pub policy: ResponsePolicy,
    /// The object the store will hold once the body is complete (empty
    /// body here), as admitted by [`crate::policy::response::admit`]; or
    /// why nothing may be stored. Other clients are only ever given this
    /// form, and only when it is shareable.
    pub admitted: Result<Arc<CachedObject>, NotStorable>,
    /// Whether other clients may be given this response: it was admitted
    /// and is small enough to keep.
    pub shareable: bool,
    /// The part a slice fill asked for, of a sliceable object (stored
    /// under the slice's key when shareable).
    pub slice: bool,
    /// A whole response stored in slices as it streams (not kept whole).
    pub sliced: bool,
}

impl FetchedHead {
    /// The stored form, when other clients may share this response.
    pub fn shared(&self) -> Option<&Arc<CachedObject>> {
        self.admitted.as_ref().ok().filter(|_| self.shareable)
    }
}

/// What a fetch produced.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// A response whose body streams through the readers.
    Response(Arc<FetchedHead>),
    /// A 304 that freshened the stored object (§4.3.4). `own` is what the
    /// requester gets (the merged fields, Set-Cookie included); `shared`
    /// the admitted form that was stored, None when the merged response
    /// may not be stored and so is for the requester alone.
    Refreshed {
        own: Arc<CachedObject>,
        shared: Option<Arc<CachedObject>>,
    },
    Failed(UpstreamError),
}

struct State {
    outcome: Option<Outcome>,
    chunks: VecDeque<Bytes>,
    /// Index of `chunks[0]` in the whole body.
    base: usize,
    bytes: usize,
    end: Option<Result<(), String>>,
    keeping: bool,
    /// Position of each live reader.
    readers: HashMap<u64, usize>,
    next_reader: u64,
}

pub struct Fill {
    state: Mutex<State>,
    changed: watch::Sender<u64>,
    progress: watch::Sender<u64>,
    max_keep: usize,
}

impl Fill {
    /// A fill that keeps at most `max_keep` body bytes.
    pub fn new(max_keep: usize) -> Arc<Fill> {
        Arc::new(Fill {
            state: Mutex::new(State {
                outcome: None,
                chunks: VecDeque::new(),
                base: 0,
                bytes: 0,
                end: None,
                keeping: true,
                readers: HashMap::new(),
                next_reader: 0,
            }),
            changed: watch::channel(0).0,
            progress: watch::channel(0).0,
            max_keep,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new reader from the first byte, or None once the fill no longer
    /// keeps its body (too large or not shareable).
    pub fn reader(self: &Arc<Fill>) -> Option<Reader> {
        let mut st = self.lock();
        if !st.keeping {
            return None;
        }
        let id = st.next_reader;
        st.next_reader += 1;
        st.readers.insert(id, 0);
        Some(Reader { fill: self.clone(), id, pos: 0, changed: self.changed.subscribe() })
    }

    /// Publishes the outcome. `keep` is false when the body must not be kept
    /// (not shareable, or known to exceed the limit).
    pub fn set_outcome(&self, outcome: Outcome, keep: bool) {
        let mut st = self.lock();
        st.keeping &= keep;
        if !matches!(outcome, Outcome::Response(_)) {
            st.end = Some(Ok(()));
        }
        st.outcome = Some(outcome);
        drop(st);
        self.changed.send_modify(|v| *v += 1);
    }

    /// Appends a body chunk, waiting for slow readers once past the limit.
    /// Returns false when nobody is left to deliver to and nothing is kept.
    pub async fn push(&self, chunk: Bytes) -> bool {
        let mut progress = self.progress.subscribe();
        {
            let mut st = self.lock();
            st.bytes += chunk.len();
            if st.keeping && st.bytes > self.max_keep {
                st.keeping = false;
            }
            st.chunks.push_back(chunk);
            Self::trim(&mut st);
        }
        self.changed.send_modify(|v| *v += 1);
        loop {
            progress.borrow_and_update();
            {
                let mut st = self.lock();
                if st.keeping {
                    return true;
                }
                if st.readers.is_empty() {
                    return false;
                }
                Self::trim(&mut st);
                let pending: usize = st.chunks.iter().map(Bytes::len).sum();
                if pending <= STREAM_WINDOW {
                    return true;
                }
            }
            if progress.changed().await.is_err() {
                return false;
            }
        }
    }

    /// Once the body is no longer kept, drops chunks every reader has read.
    fn trim(st: &mut State) {
        if st.keeping {
            return;
        }
        let min = st.readers.values().copied().min().unwrap_or(st.base + st.chunks.len());
        while st.base < min && !st.chunks.is_empty() {
            st.chunks.pop_front();
            st.base += 1;
        }
    }

    /// Marks the body complete (`Ok`) or broken (`Err`). When it completed
    /// and was kept, `store` gets the whole body first: readers see the end
    /// only after the object is stored, so a client that finished reading
    /// finds it on its next request. Returns whether `store` ran.
    ///
    /// `last` is the final chunk when the producer knows it is final (a
    /// body whose declared length is complete): it becomes visible only
    /// with the end, so a client that has every byte can never ask again
    /// before the object is stored.
    pub fn finish(&self, last: Option<Bytes>, result: Result<(), String>, store: impl FnOnce(Bytes)) -> bool {
        let body = {
            let mut st = self.lock();
            if let Some(chunk) = last {
                st.bytes += chunk.len();
                if st.keeping && st.bytes > self.max_keep {
                    st.keeping = false;
                }
                st.chunks.push_back(chunk);
            }
            match (&result, st.keeping) {
                (Ok(()), true) => {
                    let mut buf = BytesMut::with_capacity(st.bytes);
                    for c in &st.chunks {
                        buf.extend_from_slice(c);
                    }
                    Some(buf.freeze())
                }
                _ => None,
            }
        };
        let stored = body.is_some();
        if let Some(body) = body {
            store(body);
        }
        self.lock().end = Some(result);
        self.changed.send_modify(|v| *v += 1);
        stored
    }

    /// Has the whole response (or its failure) been published? The fill
    /// stays in the in-flight table until its producer is gone, which may
    /// be after a client has read the last byte.
    pub fn ended(&self) -> bool {
        self.lock().end.is_some()
    }

    /// The outcome, if published.
    pub fn outcome(&self) -> Option<Outcome> {
        self.lock().outcome.clone()
    }

    /// Publishes a failure for whatever was not published yet, so no
    /// reader waits on a producer that is gone.
    fn abandon(&self) {
        let mut st = self.lock();
        let mut changed = false;
        if st.outcome.is_none() {
            st.outcome = Some(Outcome::Failed(UpstreamError::Protocol("fetch abandoned".into())));
            changed = true;
        }
        if st.end.is_none() {
            st.end = Some(Err("fetch abandoned".into()));
            changed = true;
        }
        drop(st);
        if changed {
            self.changed.send_modify(|v| *v += 1);
        }
    }
}

/// The right to produce a fill, held by the one task that does (as
/// pingora's cache lock write permit). However that task ends (finished,
/// panicked or cancelled), dropping the producer publishes a failure for
/// anything unpublished and runs `release` (which takes the fill out of the
/// in-flight table), so waiters never wait on a producer that is gone.
pub struct Producer {
    fill: Arc<Fill>,
    release: Option<Box<dyn FnOnce() + Send>>,
}

impl Producer {
    pub fn new(fill: Arc<Fill>, release: impl FnOnce() + Send + 'static) -> Producer {
        Producer { fill, release: Some(Box::new(release)) }
    }

    pub fn fill(&self) -> &Fill {
        &self.fill
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.fill.abandon();
        if let Some(release) = self.release.take() {
            release();
        }
    }
}

/// One client's view of a fill.
pub struct Reader {
    fill: Arc<Fill>,
    id: u64,
    pos: usize,
    changed: watch::Receiver<u64>,
}

impl Reader {
    /// Waits for the fetch outcome.
    pub async fn outcome(&mut self) -> Outcome {
        loop {
            self.changed.borrow_and_update();
            if let Some(o) = self.fill.outcome() {
                return o;
            }
            if self.changed.changed().await.is_err() {
                return Outcome::Failed(UpstreamError::Protocol("fetch abandoned".into()));
            }
        }
    }

    async fn next(&mut self) -> Option<Result<Bytes, BoxError>> {
        loop {
            self.changed.borrow_and_update();
            {
                let mut st = self.fill.lock();
                if self.pos < st.base {
                    return Some(Err("reader fell behind the fill".into()));
                }
                if let Some(chunk) = st.chunks.get(self.pos - st.base).cloned() {
                    self.pos += 1;
                    st.readers.insert(self.id, self.pos);
                    drop(st);
                    self.fill.progress.send_modify(|v| *v += 1);
                    return Some(Ok(chunk));
                }
                match &st.end {
                    Some(Ok(())) => return None,
                    Some(Err(e)) => return Some(Err(e.clone().into())),
                    None => {}
                }
            }
            if self.changed.changed().await.is_err() {
                return Some(Err("fetch abandoned".into()));
            }
        }
    }

    /// The body as it streams in.
    pub fn into_body(self) -> UpstreamBody {
        let stream = futures_util::stream::unfold(self, |mut r| async move { r.next().await.map(|item| (item, r)) });
        http_body_util::StreamBody::new(futures_util::StreamExt::map(stream, |r| r.map(hyper::body::Frame::data)))
            .boxed()
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.fill.lock().readers.remove(&self.id);
        self.fill.progress.send_modify(|v| *v += 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn head() -> Outcome {
        let now = std::time::SystemTime::now();
        let object = CachedObject::for_test("http://x/", &[], Default::default());
        Outcome::Response(Arc::new(FetchedHead {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            policy: ResponsePolicy::new(StatusCode::OK, &HeaderMap::new(), now, now, &Default::default()),
            admitted: Ok(Arc::new(object)),
            shareable: true,
            slice: false,
            sliced: false,
        }))
    }

    #[tokio::test]
    async fn late_reader_gets_the_whole_body_and_store_gets_it_too() {
        let fill = Fill::new(1024);
        let early = fill.reader().unwrap();
        fill.set_outcome(head(), true);
        assert!(fill.push(Bytes::from_static(b"hello ")).await);
        let late = fill.reader().unwrap();
        assert!(fill.push(Bytes::from_static(b"world")).await);
        let mut kept = None;
        assert!(fill.finish(None, Ok(()), |b| kept = Some(b)));
        assert_eq!(kept.unwrap(), "hello world");
        for r in [early, late] {
            assert_eq!(r.into_body().collect().await.unwrap().to_bytes(), "hello world");
        }
    }

    #[tokio::test]
    async fn past_the_limit_nothing_is_kept_and_new_readers_are_refused() {
        let fill = Fill::new(4);
        let r = fill.reader().unwrap();
        fill.set_outcome(head(), true);
        let consumer = tokio::spawn(async move { r.into_body().collect().await.unwrap().to_bytes() });
        for _ in 0..100 {
            assert!(fill.push(Bytes::from(vec![b'x'; 10_000])).await);
        }
        assert!(fill.reader().is_none());
        assert!(!fill.finish(None, Ok(()), |_| panic!("nothing to store")));
        assert_eq!(consumer.await.unwrap().len(), 1_000_000);
    }

    #[tokio::test]
    async fn producer_stops_when_no_reader_is_left_and_nothing_is_kept() {
        let fill = Fill::new(4);
        let r = fill.reader().unwrap();
        fill.set_outcome(head(), false);
        drop(r);
        assert!(!fill.push(Bytes::from_static(b"abcdefgh")).await);
    }

    #[tokio::test]
    async fn a_producer_that_dies_fails_its_readers_and_releases_the_key() {
        let fill = Fill::new(1024);
        let reader = fill.reader().unwrap();
        let released = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = released.clone();
        let producer = Producer::new(fill.clone(), move || flag.store(true, std::sync::atomic::Ordering::SeqCst));
        // A producer task that panics before publishing anything.
        let task = tokio::spawn(async move {
            let _producer = producer;
            panic!("producer died");
        });
        assert!(task.await.is_err());
        assert!(released.load(std::sync::atomic::Ordering::SeqCst), "the in-flight entry is released");
        let mut reader = reader;
        let outcome = tokio::time::timeout(std::time::Duration::from_secs(5), reader.outcome()).await;
        assert!(matches!(outcome, Ok(Outcome::Failed(_))), "the waiter gets a failure at once");
    }

    #[tokio::test]
    async fn a_producer_cancelled_mid_body_ends_the_body_with_an_error() {
        let fill = Fill::new(1024);
        let reader = fill.reader().unwrap();
        let producer = Producer::new(fill.clone(), || {});
        producer.fill().set_outcome(head(), true);
        producer.fill().push(Bytes::from_static(b"part")).await;
        drop(producer);
        assert!(reader.into_body().collect().await.is_err(), "a truncated body is never a complete one");
    }

    #[tokio::test]
    async fn a_broken_body_is_an_error_for_readers() {
        let fill = Fill::new(1024);
        let r = fill.reader().unwrap();
        fill.set_outcome(head(), true);
        fill.push(Bytes::from_static(b"par")).await;
        assert!(!fill.finish(None, Err("upstream reset".into()), |_| panic!("nothing to store")));
        assert!(r.into_body().collect().await.is_err());
    }
}
