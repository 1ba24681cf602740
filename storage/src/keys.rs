//! Key layout. Numbers are big-endian so sled's byte order is numeric order; an item key is the
//! tenant's length, the tenant, then the id, so no tenant's keys can be confused with another's.

use crate::model::Item;

pub fn u64_key(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

pub fn u64_from(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

pub fn item_key(item: &Item) -> Vec<u8> {
    let tenant = item.tenant.as_bytes();
    let mut key = Vec::with_capacity(4 + tenant.len() + item.id.len());
    key.extend_from_slice(&(tenant.len() as u32).to_be_bytes());
    key.extend_from_slice(tenant);
    key.extend_from_slice(item.id.as_bytes());
    key
}

/// Inverse of [`item_key`]; `None` for bytes no item key can have.
pub fn item_from_key(key: &[u8]) -> Option<Item> {
    let len = u32::from_be_bytes(key.get(..4)?.try_into().ok()?) as usize;
    let tenant = std::str::from_utf8(key.get(4..4 + len)?).ok()?;
    let id = std::str::from_utf8(key.get(4 + len..)?).ok()?;
    Some(Item {
        id: id.to_owned(),
        tenant: tenant.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_keys_round_trip_and_do_not_collide() {
        let a = Item {
            id: "bc".into(),
            tenant: "a".into(),
        };
        let b = Item {
            id: "c".into(),
            tenant: "ab".into(),
        };
        assert_ne!(item_key(&a), item_key(&b));
        assert_eq!(item_from_key(&item_key(&a)), Some(a));
        assert_eq!(item_from_key(&item_key(&b)), Some(b));
        assert_eq!(item_from_key(&[0, 0, 0, 9, b'x']), None);
    }

    #[test]
    fn numeric_keys_sort_numerically() {
        assert!(u64_key(2) < u64_key(10));
        assert_eq!(u64_from(&u64_key(42)), Some(42));
    }
}
