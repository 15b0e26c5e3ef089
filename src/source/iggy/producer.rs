//! The producer: the router's Iggy member.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use iggy::prelude::*;
use tokio::sync::Mutex;

use super::keys::{key_headers, partition_of, TOMBSTONE_HEADER};
use super::{ensure_topic, IggyAddress, DEFAULT_PARTITIONS, REQUEST_TIMEOUT};
use crate::publish::Message;

/// A connected client, with each topic's partition ids.
type Connected = (Arc<IggyClient>, HashMap<String, Vec<u32>>);

/// Publishes to one Iggy server; connects on first use and again after a failure.
pub struct IggyProducer {
    address: IggyAddress,
    state: Mutex<Option<Connected>>,
}

impl IggyProducer {
    /// A producer for `address` (no connection yet).
    pub fn new(address: IggyAddress) -> Self {
        IggyProducer { address, state: Mutex::new(None) }
    }

    /// A record as an Iggy message: its key in headers, a tombstone as a header.
    pub fn message(key: Option<&[u8]>, payload: Option<&[u8]>) -> Result<IggyMessage, String> {
        let mut headers = BTreeMap::new();
        if let Some(k) = key {
            key_headers(k, &mut headers)?;
        }
        let body = match payload {
            Some(p) if !p.is_empty() => Bytes::copy_from_slice(p),
            _ => {
                headers.insert(HeaderKey::try_from(TOMBSTONE_HEADER).map_err(|e| e.to_string())?, HeaderValue::try_from("1").map_err(|e| e.to_string())?);
                Bytes::from_static(b"\0")
            }
        };
        IggyMessage::builder().payload(body).user_headers(headers).build().map_err(|e| e.to_string())
    }

    /// Publish a batch and wait until the server has flushed it to disk.
    pub async fn send(&self, topic: &str, batch: &[Message]) -> Result<(), String> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut state = self.state.lock().await;
        if state.is_none() {
            *state = Some((Arc::new(self.address.connect().await?), HashMap::new()));
        }
        let result = async {
            let Some((client, topics)) = state.as_mut() else { return Err("not connected".to_string()) };
            let partitions = match topics.get(topic) {
                Some(p) => p.clone(),
                None => {
                    let p = ensure_topic(client, &self.address.stream, topic, DEFAULT_PARTITIONS).await?;
                    topics.insert(topic.to_string(), p.clone());
                    p
                }
            };
            if partitions.is_empty() {
                return Err(format!("topic `{topic}` has no partitions"));
            }
            let mut by_partition: BTreeMap<u32, Vec<IggyMessage>> = BTreeMap::new();
            for (i, (k, p)) in batch.iter().enumerate() {
                by_partition.entry(partition_of(k.as_deref(), &partitions, i)).or_default().push(Self::message(k.as_deref(), p.as_deref())?);
            }
            let s = Identifier::named(&self.address.stream).map_err(|e| e.to_string())?;
            let t = Identifier::named(topic).map_err(|e| e.to_string())?;
            for (partition, mut messages) in by_partition {
                let partitioning = Partitioning::partition_id(partition);
                let send = client.send_messages(&s, &t, &partitioning, &mut messages);
                tokio::time::timeout(REQUEST_TIMEOUT, send).await.map_err(|_| "Iggy send timed out".to_string())?.map_err(|e| e.to_string())?;
                let flush = client.flush_unsaved_buffer(&s, &t, partition, true);
                tokio::time::timeout(REQUEST_TIMEOUT, flush).await.map_err(|_| "Iggy flush timed out".to_string())?.map_err(|e| e.to_string())?;
            }
            Ok(())
        }
        .await;
        if result.is_err() {
            // Reconnect next time (the server may have restarted).
            if let Some((client, _)) = state.take() {
                let _ = client.shutdown().await;
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use super::super::keys::key_and_tombstone;

    /// Every key survives the trip through headers: none, empty, a header's worth, longer,
    /// and bytes that are not UTF-8.
    #[test]
    fn any_key_round_trips_through_headers() {
        let long: Vec<u8> = (0..10_000).map(|i| b'a' + (i % 26) as u8).collect();
        let keys: Vec<Option<Vec<u8>>> =
            vec![None, Some(vec![]), Some(b"k".to_vec()), Some(vec![b'x'; 255]), Some(vec![b'y'; 256]), Some(long), Some(vec![0xff, 0x00, 0xfe])];
        for key in keys {
            let m = IggyProducer::message(key.as_deref(), Some(b"{}")).unwrap();
            assert_eq!(key_and_tombstone(&m).unwrap(), (key.clone(), false), "{:?}", key.as_ref().map(|k| k.len()));
        }
    }
}
