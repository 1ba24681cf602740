//! Record encoding: one version byte, then bincode 2.0.1 (standard config) of the record.
//!
//! bincode has no field names, so a record's layout can only change by bumping the version byte and
//! decoding both versions. Records never use serde `flatten`, `skip*`, `tag` or `untagged`, which
//! bincode's serde support silently mishandles.

use serde::{de::DeserializeOwned, Serialize};

use crate::error::{Error, Result};

/// Version of every record written by this build.
pub const VERSION: u8 = 1;

/// Most bytes one record may claim to hold. bincode allocates a string or byte buffer of the length a
/// record claims before reading it, so a corrupt length (2^40, say) would abort the process on a
/// failed allocation instead of being reported: past this limit decoding fails first. Above the
/// largest record ever written (a prepared batch or log entry is bounded by the counter's 256 MiB
/// request body).
pub const MAX_RECORD_BYTES: usize = 256 << 20;

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![VERSION];
    // Encoding into a Vec cannot fail for our plain structs; a failure is a programming error.
    let body = bincode::serde::encode_to_vec(value, bincode::config::standard())
        .expect("records are plain serde structs");
    out.extend_from_slice(&body);
    out
}

pub fn decode<T: DeserializeOwned>(tree: &'static str, bytes: &[u8]) -> Result<T> {
    match bytes.split_first() {
        Some((&VERSION, body)) => {
            let config = bincode::config::standard().with_limit::<MAX_RECORD_BYTES>();
            let (value, used) = bincode::serde::decode_from_slice(body, config)
                .map_err(|e| Error::corrupt(tree, e))?;
            if used != body.len() {
                return Err(Error::corrupt(tree, "trailing bytes"));
            }
            Ok(value)
        }
        Some((v, _)) => Err(Error::corrupt(tree, format!("unknown record version {v}"))),
        None => Err(Error::corrupt(tree, "empty record")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Item, LogEntry};

    #[test]
    fn round_trips_and_rejects_unknown_versions() {
        let entry = LogEntry {
            seq: 7,
            txid: 9,
            items: vec![Item {
                id: "a".into(),
                tenant: "ü/t".into(),
            }],
        };
        let bytes = encode(&entry);
        assert_eq!(bytes[0], VERSION);
        assert_eq!(decode::<LogEntry>("log", &bytes).unwrap(), entry);

        let mut future = bytes.clone();
        future[0] = VERSION + 1;
        assert!(matches!(
            decode::<LogEntry>("log", &future),
            Err(Error::Corrupt { .. })
        ));
        assert!(matches!(
            decode::<LogEntry>("log", &[]),
            Err(Error::Corrupt { .. })
        ));
        assert!(decode::<LogEntry>("log", &bytes[..bytes.len() - 1]).is_err());
    }
}
