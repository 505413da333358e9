//! The CRD's validation rules (`x-kubernetes-validations`, CEL): what may change in a
//! RecordingJob's spec after it was created.
//!
//! The API writes the spec once, then only seals tracks (sets an unsealed track's
//! `source.chunkCount`, with its `startOffsetMs` and `displayName`) or adds the sealed track of a participant who was not listed at the stop,
//! and only while the RecordingJob is Uploading. Everything else that decides what is processed,
//! and how (ids, prefixes, output, cleanup, timeouts, retries), is refused by the API server once
//! the object exists, with a message naming the field. The worker Pod's placement (`resources`,
//! `nodeSelector`, `tolerations`, `priorityClassName`) stays editable: it is what fixes a Job the
//! API server refused or a Pod that cannot be scheduled, which the operator takes until the Job
//! exists; after that, the SpecApplied condition says an edit was not applied.
//!
//! A rule sees the object, never its status, so none can say "once the Job exists": these rules
//! hold from creation on, and the resourceVersion-guarded writes of DESIGN.md ("How the spec
//! stays unchanged once the Job exists") still order seals against the Job's creation.
//!
//! Servers before 1.25 drop these rules and accept any edit their OpenAPI schema accepts; there
//! the operator's SpecApplied condition is all that tells of an edit. Every rule uses only what
//! 1.25 has (`rule`, `message`, transition rules with `oldSelf`), and every string it compares has
//! a `maxLength`, so the server's cost estimate of each rule stays small.

use serde_json::{Value, json};

/// `field` keeps the value it was created with (a transition rule: it only runs on updates).
pub fn unchanged(field: &str) -> Value {
    json!({
        "rule": "self == oldSelf",
        "message": format!("{field} cannot be changed once the RecordingJob exists"),
    })
}

/// Optional `field` of the object the rule is on is not set, unset or changed after creation.
/// A rule on the field itself would only run when both the old and the new object have it.
pub fn unchanged_optional(field: &str) -> Value {
    json!({
        "rule": format!(
            "has(self.{field}) == has(oldSelf.{field}) && (!has(self.{field}) || self.{field} == oldSelf.{field})"
        ),
        "message": format!("{field} cannot be set, unset or changed once the RecordingJob exists"),
    })
}

/// Every track of the old spec is still there, with its participant and prefix, and sealed with
/// the same count if it was sealed; new tracks may follow. So a seal (an unset chunkCount set)
/// and an added track pass, and nothing else does.
pub fn tracks_only_sealed_or_added() -> Value {
    json!({
        "rule": "size(self) >= size(oldSelf) && oldSelf.all(old, self.exists(t, \
                 t.participantId == old.participantId && t.source.prefix == old.source.prefix \
                 && (!has(old.source.chunkCount) \
                 || (has(t.source.chunkCount) && t.source.chunkCount == old.source.chunkCount \
                 && has(t.startOffsetMs) == has(old.startOffsetMs) \
                 && (!has(old.startOffsetMs) || t.startOffsetMs == old.startOffsetMs) \
                 && has(t.displayName) == has(old.displayName) \
                 && (!has(old.displayName) || t.displayName == old.displayName)))))",
        "message": "tracks cannot be changed once the RecordingJob exists, except to seal an \
                    unsealed track (set its source.chunkCount, startOffsetMs and displayName) or \
                    add a track: a track's participantId and source.prefix, and a sealed track's \
                    chunkCount, startOffsetMs and displayName, stay as they are, and no track is \
                    removed",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_name_their_field() {
        assert_eq!(unchanged("roomId")["rule"], "self == oldSelf");
        assert!(
            unchanged("roomId")["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("roomId "))
        );
        let ttl = unchanged_optional("ttlSecondsAfterFinished");
        assert_eq!(
            ttl["rule"],
            "has(self.ttlSecondsAfterFinished) == has(oldSelf.ttlSecondsAfterFinished) && \
             (!has(self.ttlSecondsAfterFinished) || self.ttlSecondsAfterFinished == \
             oldSelf.ttlSecondsAfterFinished)"
        );
        assert!(
            tracks_only_sealed_or_added()["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("tracks "))
        );
    }
}
