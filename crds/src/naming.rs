//! Deterministic names: the same recording always maps to the same RecordingJob, so a second
//! stop finds the first job instead of creating another.

/// The RecordingJob name for a recording id.
///
/// Kubernetes names are lowercase DNS labels while recording ids may hold capitals and `_`, so the
/// readable part is folded to lowercase and a hash of the exact id keeps `Ab` and `ab` apart.
/// The result is at most 52 characters: the Job gets the same name, and the Job controller
/// appends a 6-character suffix for Pod names and puts the Job name in a label (limit 63).
pub fn recording_job_name(recording_id: &str) -> String {
    let readable: String = recording_id
        .chars()
        .map(|c| match c {
            'A'..='Z' => c.to_ascii_lowercase(),
            'a'..='z' | '0'..='9' => c,
            _ => '-',
        })
        .take(38)
        .collect();
    let readable = readable.trim_matches('-');
    let hash = fnv1a32(recording_id.as_bytes());
    if readable.is_empty() {
        format!("rec-{hash:08x}")
    } else {
        format!("rec-{readable}-{hash:08x}")
    }
}

/// 32-bit FNV-1a: tiny, stable across releases and platforms, good enough to tell ids apart.
fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |hash, &b| {
        (hash ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dns_labels_and_stable() {
        for id in ["rec1", "Rec_1", "a", "-_-", &"X".repeat(64)] {
            let name = recording_job_name(id);
            assert!(name.len() <= 52, "{name} is too long");
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
                "{name} is not a DNS label"
            );
            assert!(!name.ends_with('-') && name.starts_with("rec-"));
            assert_eq!(name, recording_job_name(id), "not deterministic");
        }
    }

    #[test]
    fn ids_differing_in_case_get_different_names() {
        assert_ne!(recording_job_name("Ab"), recording_job_name("ab"));
        assert_ne!(recording_job_name("a_b"), recording_job_name("a-b"));
    }
}
