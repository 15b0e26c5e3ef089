//! Apache Iggy: addresses, the producer (the router's Iggy member) and the source (`ingest
//! --iggy`).
//!
//! The source reads the partitions that its Iggy consumer group gives this process
//! ([`group`]: members share a topic's partitions and hand them over cooperatively), starting
//! each at the offset stored in the lake, exactly like the Kafka source. The group's stored
//! offsets only tell the server when a partition may move; reading never starts from them.
//!
//! A lakepipe topic is an Iggy topic of the same name inside one stream (`lakepipe` unless the
//! URL names another: `iggy://user:pass@host:port/stream`). The record key travels in the user
//! header `key` (a UTF-8 key of 1 to 255 bytes; any other key in raw chunks, see
//! [`KEY_HEADER`]); a delete (tombstone) is the header `tombstone` with a one-byte payload, since
//! Iggy payloads cannot be empty. Records are spread over partitions by a hash of the key and
//! sent one request per partition; each request is acknowledged only after the server has
//! flushed the partition to disk.

use std::time::Duration;

use iggy::prelude::*;

mod group;
pub mod inspect;
mod keys;
mod listing;
mod producer;
mod source;

pub use keys::{KEY_HEADER, TOMBSTONE_HEADER};
pub use producer::IggyProducer;
pub use source::IggySource;

/// Partitions of a topic the producer creates on first use.
const DEFAULT_PARTITIONS: u32 = 3;
/// How long connecting and each request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where an Iggy server is, and which stream holds lakepipe's topics.
#[derive(Clone, PartialEq, Eq)]
pub struct IggyAddress {
    user: String,
    password: String,
    host: String,
    /// The stream.
    pub stream: String,
}

impl std::fmt::Debug for IggyAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display())
    }
}

impl IggyAddress {
    /// Parse `iggy://user:pass@host:port[/stream]`.
    pub fn parse(url: &str) -> Result<Self, String> {
        let usage = "an Iggy URL is iggy://user:password@host:port[/stream]";
        let rest = url.strip_prefix("iggy://").ok_or_else(|| usage.to_string())?;
        let (creds, rest) = rest.rsplit_once('@').ok_or_else(|| format!("the Iggy URL has no user and password: {usage}"))?;
        let (user, password) = creds.split_once(':').ok_or_else(|| format!("the Iggy URL has no password: {usage}"))?;
        let (host, stream) = match rest.split_once('/') {
            Some((h, s)) if !s.is_empty() => (h, s),
            Some((h, _)) => (h, "lakepipe"),
            None => (rest, "lakepipe"),
        };
        if user.is_empty() || host.rsplit_once(':').is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err()) {
            return Err(usage.to_string());
        }
        if [':', '@', '?', '/'].iter().any(|c| password.contains(*c)) {
            return Err("the Iggy password may not contain ':', '@', '?' or '/'".into());
        }
        Ok(IggyAddress { user: user.into(), password: password.into(), host: host.into(), stream: stream.into() })
    }

    /// The URL without the password.
    pub fn display(&self) -> String {
        format!("iggy://{}:***@{}/{}", self.user, self.host, self.stream)
    }

    /// Connect and log in (the client library logs in during `connect`).
    pub async fn connect(&self) -> Result<IggyClient, String> {
        let conn = format!("iggy://{}:{}@{}?reconnection_retries=2", self.user, self.password, self.host);
        let client = IggyClient::from_connection_string(&conn).map_err(|e| format!("{}: {e}", self.display()))?;
        match tokio::time::timeout(REQUEST_TIMEOUT, client.connect()).await {
            Ok(Ok(())) => Ok(client),
            Ok(Err(e)) => Err(format!("cannot connect to {}: {e}", self.display())),
            Err(_) => Err(format!("cannot connect to {} within {REQUEST_TIMEOUT:?}", self.display())),
        }
    }
}

/// Create the stream and topic if missing; returns the topic's partition ids.
pub async fn ensure_topic(client: &IggyClient, stream: &str, topic: &str, partitions: u32) -> Result<Vec<u32>, String> {
    let s = Identifier::named(stream).map_err(|e| e.to_string())?;
    let t = Identifier::named(topic).map_err(|e| e.to_string())?;
    if matches!(client.get_stream(&s).await, Ok(None)) {
        match client.create_stream(stream).await {
            Ok(_) | Err(IggyError::StreamNameAlreadyExists(_)) => {}
            Err(e) => return Err(format!("cannot create stream `{stream}`: {e}")),
        }
    }
    let details = match client.get_topic(&s, &t).await {
        Ok(Some(d)) => d,
        _ => {
            match client.create_topic(&s, topic, partitions, CompressionAlgorithm::None, None, IggyExpiry::NeverExpire, MaxTopicSize::ServerDefault).await {
                Ok(_) | Err(IggyError::TopicNameAlreadyExists(..)) => {}
                Err(e) => return Err(format!("cannot create topic `{stream}/{topic}`: {e}")),
            }
            client.get_topic(&s, &t).await.map_err(|e| e.to_string())?.ok_or_else(|| format!("topic `{stream}/{topic}` vanished"))?
        }
    };
    let mut ids: Vec<u32> = details.partitions.iter().map(|p| p.id).collect();
    ids.sort_unstable();
    Ok(ids)
}


#[cfg(test)]
mod tests {
    use super::*;
    use crate::publish::Message;
    use keys::key_and_tombstone;

    #[test]
    fn parses_addresses_and_hides_the_password() {
        let a = IggyAddress::parse("iggy://iggy:s3cret@127.0.0.1:8090").unwrap();
        assert_eq!(a.stream, "lakepipe");
        assert_eq!(a.display(), "iggy://iggy:***@127.0.0.1:8090/lakepipe");
        assert!(!format!("{a:?}").contains("s3cret"));
        assert_eq!(IggyAddress::parse("iggy://u:p@h:1/events").unwrap().stream, "events");
        for bad in ["iggy://h:1", "iggy://u@h:1", "iggy://u:p@h", "iggy://u:p@:1", "kafka://h:1", "iggy://u:p:q@h:1"] {
            assert!(IggyAddress::parse(bad).is_err(), "{bad}");
        }
    }

    /// Against a real server (`IGGY_URL`).
    #[tokio::test]
    #[ignore = "needs an Iggy server: scripts/test.sh starts one and runs the Iggy tests (`--ignored iggy`) with IGGY_URL"]
    async fn publishes_to_a_real_server() {
        let url = std::env::var("IGGY_URL").expect("IGGY_URL names an Iggy server (scripts/test.sh starts one)");
        let address = IggyAddress::parse(&url).unwrap();
        let producer = IggyProducer::new(address.clone());
        let topic = format!("lakepipe_test_{}", std::process::id());
        let keys: Vec<Vec<u8>> = vec![b"k1".to_vec(), b"k2".to_vec(), vec![b'z'; 1000], vec![0xff, 0xfe], vec![]];
        let batch: Vec<Message> = keys.iter().enumerate().map(|(i, k)| (Some(k.clone()), (i != 1).then(|| b"{}".to_vec()))).collect();
        producer.send(&topic, &batch).await.unwrap();
        let client = address.connect().await.unwrap();
        let parts = ensure_topic(&client, &address.stream, &topic, DEFAULT_PARTITIONS).await.unwrap();
        assert_eq!(parts.len(), DEFAULT_PARTITIONS as usize);
        // Every key comes back as it was sent, from the server.
        let (s, t) = (Identifier::named(&address.stream).unwrap(), Identifier::named(&topic).unwrap());
        let mut got = Vec::new();
        for p in parts {
            let polled = client.poll_messages(&s, &t, Some(p), &Consumer::default(), &PollingStrategy::offset(0), 100, false).await.unwrap();
            got.extend(polled.messages.iter().map(|m| key_and_tombstone(m).unwrap().0.unwrap()));
        }
        got.sort();
        let mut want = keys;
        want.sort();
        assert_eq!(got, want);
    }
}
