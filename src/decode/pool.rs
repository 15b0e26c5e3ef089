//! Decoding in the background, as messages arrive.
//!
//! Each poll of the source becomes a [`Chunk`] that one of a fixed set of threads (one per
//! core) decodes while the ingest keeps reading, and while the previous batch commits. By the
//! time a batch closes, most of it is decoded: decoding leaves the commit's critical path.
//! Results stay in the chunk until the batch takes them, one message at a time, in stream
//! order; a message that the batch skips (already committed, or read twice after a seek) is
//! decoded for nothing, which costs time, never correctness.

use std::collections::HashMap;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};

use super::{DecodeError, Decoder, Record};
use crate::source::RawMessage;

/// What decoding one message gave.
pub type Decoded = Result<Record, DecodeError>;

/// The messages of one poll (with their topics), and their decoded forms once ready.
pub struct Chunk {
    msgs: Vec<(Arc<str>, RawMessage)>,
    /// `None` until decoded; then one slot per message, emptied when taken.
    results: Mutex<Option<Vec<Option<Decoded>>>>,
    /// Gets a permit when `results` is set (or when decoding failed).
    done: tokio::sync::Semaphore,
}

impl Chunk {
    /// Messages in the chunk.
    pub fn len(&self) -> usize {
        self.msgs.len()
    }

    /// Whether the chunk holds no message.
    pub fn is_empty(&self) -> bool {
        self.msgs.is_empty()
    }

    /// The topic and message at `i`.
    pub fn get(&self, i: usize) -> (&str, &RawMessage) {
        let (t, m) = &self.msgs[i];
        (t, m)
    }

    /// Wait until the chunk is decoded.
    pub async fn ready(&self) {
        // The permit goes back at once: every later waiter passes too.
        let _ = self.done.acquire().await;
    }

    /// Take the decoded form of message `i` (after [`Chunk::ready`]). `None` when decoding
    /// panicked, or when it was already taken.
    pub fn take(&self, i: usize) -> Option<Decoded> {
        let mut guard = self.results.lock().unwrap_or_else(|p| p.into_inner());
        guard.as_mut().and_then(|r| r.get_mut(i)).and_then(Option::take)
    }

    fn decode(&self, decoders: &HashMap<String, Decoder>) {
        let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.msgs
                .iter()
                .map(|(topic, m)| decoders.get(&**topic).map(|d| d.decode(m.key.as_deref(), m.payload.as_deref(), m.partition, m.offset)))
                .collect::<Vec<_>>()
        }));
        match decoded {
            Ok(results) => *self.results.lock().unwrap_or_else(|p| p.into_inner()) = Some(results),
            Err(_) => tracing::error!(messages = self.msgs.len(), "a decoder thread panicked; the batch fails"),
        }
        self.done.add_permits(1);
    }
}

/// A fixed set of decoder threads, one per core. Dropping the pool ends them once their
/// current chunk is done.
pub struct DecodePool {
    jobs: Sender<Arc<Chunk>>,
    decoders: Arc<HashMap<String, Decoder>>,
}

impl DecodePool {
    /// Start `threads` decoder threads for these topics.
    pub fn new(decoders: HashMap<String, Decoder>, threads: usize) -> std::io::Result<Self> {
        let (jobs, queue) = channel::<Arc<Chunk>>();
        let queue = Arc::new(Mutex::new(queue));
        let decoders = Arc::new(decoders);
        for n in 0..threads.max(1) {
            let (queue, decoders) = (queue.clone(), decoders.clone());
            std::thread::Builder::new().name(format!("lakepipe-decode-{n}")).spawn(move || work(&queue, &decoders))?;
        }
        Ok(DecodePool { jobs, decoders })
    }

    /// A pool without threads: each chunk is decoded on the caller's thread as it is submitted
    /// (the loop's model tests use it, so that a case runs the same way every time).
    pub fn inline(decoders: HashMap<String, Decoder>) -> Self {
        let (jobs, _) = channel::<Arc<Chunk>>();
        DecodePool { jobs, decoders: Arc::new(decoders) }
    }

    /// Queue messages for decoding; the chunk is returned at once.
    pub fn submit(&self, msgs: Vec<(Arc<str>, RawMessage)>) -> Arc<Chunk> {
        let chunk = Arc::new(Chunk { msgs, results: Mutex::new(None), done: tokio::sync::Semaphore::new(0) });
        if let Err(unsent) = self.jobs.send(chunk.clone()) {
            // Every decoder thread is gone (they end only with the pool): decode here.
            unsent.0.decode(&self.decoders);
        }
        chunk
    }
}

fn work(queue: &Mutex<Receiver<Arc<Chunk>>>, decoders: &HashMap<String, Decoder>) {
    loop {
        let next = queue.lock().unwrap_or_else(|p| p.into_inner()).recv();
        match next {
            Ok(chunk) => chunk.decode(decoders),
            Err(_) => return, // the pool is gone
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::builtin_specs;

    fn msg(offset: i64, payload: &str) -> RawMessage {
        RawMessage { partition: 0, offset, key: None, payload: Some(payload.as_bytes().to_vec()), timestamp_ms: None }
    }

    #[tokio::test]
    async fn chunks_decode_in_the_background_and_are_taken_once() {
        let spec = builtin_specs()["transactions"].clone();
        let pool = DecodePool::new(HashMap::from([("transactions".to_string(), Decoder::new(spec, 1 << 20).unwrap())]), 2).unwrap();
        let good = r#"{"transaction_id":"t1","user_id":"u","amount":1.5,"currency":"EUR","status":"completed","timestamp":"2026-01-01T00:00:00Z"}"#;
        let chunks: Vec<Arc<Chunk>> = (0..20)
            .map(|c| {
                pool.submit(vec![
                    ("transactions".into(), msg(3 * c, good)),
                    ("transactions".into(), msg(3 * c + 1, "{not json")),
                    ("unknown".into(), msg(3 * c + 2, good)),
                ])
            })
            .collect();
        for (c, chunk) in chunks.iter().enumerate() {
            chunk.ready().await;
            chunk.ready().await; // a second wait passes too
            assert_eq!(chunk.len(), 3);
            let first = chunk.take(0).expect("decoded").expect("valid");
            assert_eq!((first.key.as_str(), first.offset), ("t1", 3 * c as i64));
            assert!(chunk.take(0).is_none(), "taken twice");
            let bad = chunk.take(1).expect("decoded").expect_err("malformed");
            assert_eq!(bad.kind, crate::decode::ErrorKind::MalformedJson);
            assert!(chunk.take(2).is_none(), "a topic without a schema has no result");
        }
    }
}
