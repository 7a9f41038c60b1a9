//! Requests and replies survive the wire unchanged, and a reply with a field missing or
//! misspelled fails to parse with an error naming the op and the field (the reason these
//! types exist: the CLI used to read such a field as 0).

use super::*;
use crate::model::VolumeStatus as VolumeState;
use crate::report::*;
use serde_json::Value;
use std::fmt::Debug;

fn volume_config() -> VolumeConfig {
    VolumeConfig {
        name: "v".into(),
        id: 3,
        status: VolumeState::Started,
        replica: 2,
        min_size: 1,
        pg_count: 4,
        epoch: 7,
        replica_sets: vec![vec!["n1:/b/v".into(), "n2:/b/v".into()]],
        copies_stored: 2,
        replication: "primary-copy".into(),
        options: [("io.mode".to_string(), "auto".to_string())].into(),
        store: "etcd://127.0.0.1:2379".into(),
    }
}

fn pgs() -> Vec<PgSummary> {
    vec![
        PgSummary {
            pg: 0,
            epoch: Some(2),
            primary: Some("n1:/b/v".into()),
            up_to_date: vec!["n1:/b/v".into(), "n2:/b/v".into()],
            writable: true,
        },
        PgSummary {
            pg: 1,
            epoch: None,
            primary: None,
            up_to_date: vec![],
            writable: false,
        },
    ]
}

fn heal_target() -> HealTargetReport {
    HealTargetReport {
        member: 1,
        state: "healing".into(),
        bytes_left: 4096,
        bytes_copied: 8192,
        rate_bytes_s: 1 << 20,
        namespace_pending: false,
        error: Some("disk full".into()),
        files: vec![HealFileReport {
            fid: "0x10000000000002a".into(),
            path: "vm.img".into(),
            bytes_left: 4096,
            bytes_copied: 8192,
        }],
    }
}

fn heal_local() -> HealLocalReply {
    HealLocalReply {
        node: "n1".into(),
        volume: "v".into(),
        bricks: vec!["n1:/b/v".into(), "n2:/b/v".into()],
        failing_disks: vec![failing_disk()],
        pg_count: 4,
        behind: vec![PgBehind {
            pg: 2,
            epoch: 5,
            primary: Some(0),
            healing: vec![1],
            absent: vec![],
        }],
        reports: vec![PgHealReport {
            pg: 2,
            epoch: 5,
            source_member: 0,
            copied_total_bytes: 1 << 30,
            targets: vec![heal_target()],
        }],
    }
}

fn can_stop() -> CanStop {
    CanStop {
        node: "n1".into(),
        can_stop: false,
        blocked_pgs: 1,
        reasons: vec![CanStopReason {
            volume: "v".into(),
            pg: 2,
            reason: "holds the only up-to-date copy".into(),
            up_to_date: vec!["n1:/b/v".into()],
            healing: vec![],
        }],
    }
}

fn volume_handle() -> VolumeHandle {
    VolumeHandle {
        id: 3,
        name: "v".into(),
        pg_count: 1,
        epoch: 7,
        members: vec![MemberRoute {
            node: "n1".into(),
            addr: "127.0.0.1:7700".into(),
        }],
        pg_maps: vec![crate::PgMap {
            epoch: 2,
            members: 1,
            placed: 1,
            up_to_date: 1,
            healing: 0,
            min_size: 1,
            preferred: 0,
            fresh: 0,
        }],
        replica: 1,
    }
}

fn share_settings() -> ShareSettings {
    ShareSettings {
        users: vec![ShareUser {
            name: "alice".into(),
            access: ShareAccess::Ro,
            password_sealed_hex: "00ff".into(),
        }],
        encrypt: true,
        leases: false,
    }
}

fn attrs() -> FileAttrs {
    FileAttrs {
        fid: "0x000100000000002a".into(),
        pg: 1,
        kind: AttrKind::File,
        mode: "644".into(),
        nlink: 1,
        uid: 0,
        gid: 0,
        size: 13,
        used_bytes: 4096,
        mtime: 1_700_000_000,
        mtime_nsec: 5,
    }
}

fn failing_disk() -> FailingDiskReport {
    FailingDiskReport {
        brick: "n2:/b/v".into(),
        error: "write: Input/output error (os error 5)".into(),
        failing_s: 12,
        failures: 3,
    }
}

fn heal_status() -> HealStatus {
    HealStatus {
        failing_disks: vec![failing_disk()],
        volume: "v".into(),
        healed: false,
        copied_total_bytes: 1 << 30,
        bytes_left: 4096,
        bytes_copied: 8192,
        rate_bytes_s: 1 << 20,
        eta_s: Some(1),
        pgs_behind: 1,
        pgs: vec![HealPgStatus {
            pg: 2,
            epoch: 5,
            source: Some("n1:/b/v".into()),
            reported: true,
            healing: vec!["n2:/b/v".into()],
            absent: vec![],
            targets: vec![HealTargetStatus {
                report: heal_target(),
                brick: "n2:/b/v".into(),
                eta_s: None,
            }],
        }],
        unreachable_nodes: vec![UnreachableNode {
            node: "n3".into(),
            error: "no answer".into(),
        }],
    }
}

/// The reply survives encoding and decoding unchanged.
fn round_trip<C: MgmtCall>(reply: C::Reply)
where
    C::Reply: PartialEq + Debug,
{
    let doc = encode_reply::<C>(&reply).expect("encode");
    let back = decode_reply::<C>(&doc).unwrap_or_else(|e| panic!("{}: {e}", C::OP));
    assert_eq!(back, reply, "{}", C::OP);
}

fn round_trip_doc<T: Serialize + DeserializeOwned + PartialEq + Debug>(doc: T) {
    let text = serde_json::to_string(&doc).expect("encode");
    let back: T = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
    assert_eq!(back, doc);
}

/// The object at `pointer` in `doc` with `field` removed, or renamed to `field` + "_x".
fn mutated(doc: &Value, pointer: &str, field: &str, rename: bool) -> Vec<u8> {
    let mut doc = doc.clone();
    let obj = doc
        .pointer_mut(pointer)
        .and_then(Value::as_object_mut)
        .unwrap_or_else(|| panic!("no object at {pointer:?}"));
    let value = obj
        .remove(field)
        .unwrap_or_else(|| panic!("no field {field:?} at {pointer:?}"));
    if rename {
        obj.insert(format!("{field}_x"), value);
    }
    serde_json::to_vec(&doc).expect("encode")
}

/// A reply missing `field` (in the object at `pointer`) or with it misspelled fails to parse,
/// and the error names the op and the field.
fn rejects<C: MgmtCall>(reply: &C::Reply, pointer: &str, field: &str) {
    let doc = serde_json::to_value(reply).expect("encode");
    let missing = decode_reply::<C>(&mutated(&doc, pointer, field, false))
        .err()
        .unwrap_or_else(|| panic!("{}: parsed without {field}", C::OP));
    assert!(
        missing.contains(C::OP) && missing.contains(&format!("missing field `{field}`")),
        "{missing}"
    );
    let misspelled = decode_reply::<C>(&mutated(&doc, pointer, field, true))
        .err()
        .unwrap_or_else(|| panic!("{}: parsed with {field} misspelled", C::OP));
    assert!(
        misspelled.contains(C::OP) && misspelled.contains(field),
        "{misspelled}"
    );
}

/// As `rejects`, for a document the CLI prints.
fn rejects_doc<T: Serialize + DeserializeOwned + Debug>(doc: &T, pointer: &str, field: &str) {
    let value = serde_json::to_value(doc).expect("encode");
    for rename in [false, true] {
        let text = mutated(&value, pointer, field, rename);
        let err = serde_json::from_slice::<T>(&text)
            .err()
            .unwrap_or_else(|| panic!("parsed with {field} missing or misspelled"))
            .to_string();
        assert!(err.contains(field), "{err}");
    }
}

#[test]
fn every_request_carries_its_op_tag_and_parses_back() {
    fn check<C: MgmtCall + Debug>(req: C) {
        let op: MgmtOp = req.into();
        assert_eq!(op.name(), C::OP);
        let doc = op.encode().expect("encode");
        let value: Value = serde_json::from_slice(&doc).expect("JSON");
        assert_eq!(value["op"], C::OP, "serde's tag and MgmtCall::OP agree");
        assert_eq!(MgmtOp::parse(&doc).expect("parse"), op);
    }
    let name = || "v".to_string();
    check(VolumeCreate {
        name: name(),
        replica: 3,
        bricks: vec!["n1:/b".into()],
        pg_count: Some(16),
    });
    check(VolumeStart { name: name() });
    check(VolumeStop { name: name() });
    check(VolumeDelete { name: name() });
    check(VolumeInfo { name: name() });
    check(VolumeStatus { name: name() });
    check(VolumeList {});
    check(VolumeSet {
        name: name(),
        key: "io.mode".into(),
        value: "direct".into(),
    });
    check(VolumeReplaceBrick {
        name: name(),
        old: "n1:/a".into(),
        new: "n2:/b".into(),
    });
    check(PeerAdd {
        name: "n2".into(),
        addr: "127.0.0.1:7701".into(),
    });
    check(PeerList {});
    check(PeerRemove { name: "n2".into() });
    check(VolumeOpen { name: name() });
    check(HealLocal { name: name() });
    check(NodeCanStop { node: "n1".into() });
    check(UserAdd {
        name: "alice".into(),
        password_sealed_hex: "00".into(),
        admin: true,
    });
    check(UserPasswd {
        name: "alice".into(),
        password_sealed_hex: "00".into(),
    });
    check(UserRemove {
        name: "alice".into(),
    });
    check(UserList {});
    check(ShareUsers { volume: name() });
}

#[test]
fn the_wire_form_of_requests_is_unchanged() {
    let doc = MgmtOp::from(VolumeCreate {
        name: "v".into(),
        replica: 1,
        bricks: vec![],
        pg_count: None,
    })
    .encode()
    .expect("encode");
    assert_eq!(
        String::from_utf8(doc).expect("utf-8"),
        r#"{"op":"volume_create","name":"v","replica":1,"bricks":[],"pg_count":null}"#
    );
    assert_eq!(
        MgmtOp::parse(br#"{"op":"volume_list"}"#).expect("no fields"),
        MgmtOp::VolumeList(VolumeList {})
    );
    // Optional request fields may be left out.
    assert_eq!(
        MgmtOp::parse(br#"{"op":"user_add","name":"a","password_sealed_hex":"00"}"#)
            .expect("admin defaults to false"),
        MgmtOp::UserAdd(UserAdd {
            name: "a".into(),
            password_sealed_hex: "00".into(),
            admin: false,
        })
    );
}

#[test]
fn misspelled_request_fields_are_refused_naming_the_op() {
    let e =
        MgmtOp::parse(br#"{"op":"volume_create","name":"v","replica":1,"bricks":[],"pgcount":8}"#)
            .expect_err("pgcount is not a field");
    assert!(
        e.contains("volume_create") && e.contains("unknown field `pgcount`"),
        "{e}"
    );
    let e = MgmtOp::parse(br#"{"op":"volume_list","name":"v"}"#).expect_err("no fields");
    assert!(e.contains("volume_list") && e.contains("`name`"), "{e}");
    let e = MgmtOp::parse(br#"{"op":"volume_start"}"#).expect_err("name is required");
    assert!(
        e.contains("volume_start") && e.contains("missing field `name`"),
        "{e}"
    );
    let e = MgmtOp::parse(br#"{"op":"volume_strat","name":"v"}"#).expect_err("no such op");
    assert!(e.contains("volume_strat"), "{e}");
}

#[test]
fn volume_replies_round_trip_and_refuse_missing_or_misspelled_fields() {
    round_trip::<VolumeCreate>(volume_config());
    round_trip::<VolumeStart>(volume_config());
    round_trip::<VolumeStop>(volume_config());
    round_trip::<VolumeSet>(volume_config());
    let detail = VolumeDetail {
        volume: volume_config(),
        pgs: pgs(),
    };
    round_trip::<VolumeInfo>(detail.clone());
    let replaced = BrickReplaced {
        volume: volume_config(),
        replaced: ReplacedBrick {
            old: "n2:/b/v".into(),
            new: "n3:/b/v".into(),
        },
        pgs: pgs(),
    };
    round_trip::<VolumeReplaceBrick>(replaced.clone());
    let deleted = VolumeDeleted {
        deleted: "v".into(),
        note: "left on disk".into(),
    };
    round_trip::<VolumeDelete>(deleted.clone());
    let mut status = VolumeStatusReply {
        name: "v".into(),
        status: VolumeState::Stopped,
        epoch: 7,
        pg_count: 4,
        bricks: vec![BrickStatus {
            brick: "n1:/b/v".into(),
            member: 0,
            online: true,
            primary_of_pgs: 4,
            up_to_date_in_pgs: 4,
            total_bytes: Some(1 << 40),
            avail_bytes: Some(1 << 39),
            files_indexed: Some(12),
        }],
    };
    round_trip::<VolumeStatus>(status.clone());
    let remote = BrickStatus {
        total_bytes: None,
        avail_bytes: None,
        files_indexed: None,
        ..status.bricks[0].clone()
    };
    status.bricks.push(remote);
    round_trip::<VolumeStatus>(status.clone());
    let list = Volumes {
        volumes: vec![VolumeListEntry {
            name: "v".into(),
            id: 3,
            replica: 2,
            status: VolumeState::Created,
            bricks: 2,
        }],
    };
    round_trip::<VolumeList>(list.clone());
    round_trip::<VolumeOpen>(volume_handle());

    rejects::<VolumeStart>(&volume_config(), "", "replica");
    rejects::<VolumeInfo>(&detail, "", "pgs");
    // A field of the flattened configuration is still required.
    rejects::<VolumeInfo>(&detail, "", "copies_stored");
    rejects::<VolumeInfo>(&detail, "/pgs/0", "writable");
    rejects::<VolumeReplaceBrick>(&replaced, "/replaced", "new");
    rejects::<VolumeReplaceBrick>(&replaced, "", "epoch");
    rejects::<VolumeDelete>(&deleted, "", "deleted");
    rejects::<VolumeStatus>(&status, "/bricks/0", "online");
    rejects::<VolumeList>(&list, "/volumes/0", "status");
    rejects::<VolumeOpen>(&volume_handle(), "", "pg_maps");
    rejects::<VolumeOpen>(&volume_handle(), "/members/0", "addr");
}

#[test]
fn optional_reply_fields_may_be_absent_but_not_misspelled() {
    let mut doc = serde_json::to_value(pgs()[1].clone()).expect("encode");
    let obj = doc.as_object_mut().expect("object");
    obj.remove("epoch");
    obj.remove("primary");
    let pg: PgSummary = serde_json::from_value(doc.clone()).expect("no map yet");
    assert_eq!(pg, pgs()[1]);
    doc["epoh"] = Value::from(3);
    let e = serde_json::from_value::<PgSummary>(doc).expect_err("misspelled");
    assert!(e.to_string().contains("unknown field `epoh`"), "{e}");
    // Space figures are left out for bricks on other nodes.
    let remote = BrickStatus {
        brick: "n2:/b/v".into(),
        member: 1,
        online: false,
        primary_of_pgs: 0,
        up_to_date_in_pgs: 0,
        total_bytes: None,
        avail_bytes: None,
        files_indexed: None,
    };
    let text = serde_json::to_string(&remote).expect("encode");
    assert!(!text.contains("total_bytes"), "{text}");
}

#[test]
fn peer_replies_round_trip_and_refuse_missing_or_misspelled_fields() {
    let added = PeerAdded {
        added: "n2".into(),
        addr: "127.0.0.1:7701".into(),
    };
    round_trip::<PeerAdd>(added.clone());
    let peers = Peers {
        store: "etcd://127.0.0.1:2379".into(),
        peers: vec![Peer {
            name: "n1".into(),
            addr: "127.0.0.1:7700".into(),
            is_self: true,
            alive: true,
        }],
    };
    round_trip::<PeerList>(peers.clone());
    let removed = PeerRemoved {
        removed: "n2".into(),
    };
    round_trip::<PeerRemove>(removed.clone());
    // The wire name of `is_self` is `self`.
    let doc = serde_json::to_value(&peers).expect("encode");
    assert_eq!(doc["peers"][0]["self"], true);

    rejects::<PeerAdd>(&added, "", "addr");
    rejects::<PeerList>(&peers, "/peers/0", "alive");
    rejects::<PeerList>(&peers, "/peers/0", "self");
    rejects::<PeerRemove>(&removed, "", "removed");
}

#[test]
fn heal_and_node_replies_round_trip_and_refuse_missing_or_misspelled_fields() {
    round_trip::<HealLocal>(heal_local());
    round_trip::<NodeCanStop>(can_stop());
    rejects::<HealLocal>(&heal_local(), "", "behind");
    rejects::<HealLocal>(&heal_local(), "/reports/0", "copied_total_bytes");
    rejects::<HealLocal>(&heal_local(), "/reports/0/targets/0", "bytes_left");
    rejects::<HealLocal>(&heal_local(), "/reports/0/targets/0/files/0", "path");
    rejects::<HealLocal>(&heal_local(), "/behind/0", "absent");
    rejects::<NodeCanStop>(&can_stop(), "", "can_stop");
    rejects::<NodeCanStop>(&can_stop(), "", "reasons");
    rejects::<NodeCanStop>(&can_stop(), "/reasons/0", "reason");
}

#[test]
fn user_replies_round_trip_and_refuse_missing_or_misspelled_fields() {
    let added = UserAdded {
        added: "alice".into(),
        admin: false,
    };
    round_trip::<UserAdd>(added.clone());
    let changed = PasswordChanged {
        changed: "alice".into(),
    };
    round_trip::<UserPasswd>(changed.clone());
    let removed = UserRemoved {
        removed: "alice".into(),
    };
    round_trip::<UserRemove>(removed.clone());
    let users = Users {
        users: vec![UserEntry {
            name: "alice".into(),
            admin: false,
            smb: true,
            access: [("v".to_string(), ShareAccess::Rw)].into(),
        }],
    };
    round_trip::<UserList>(users.clone());
    round_trip::<ShareUsers>(share_settings());

    rejects::<UserAdd>(&added, "", "admin");
    rejects::<UserPasswd>(&changed, "", "changed");
    rejects::<UserRemove>(&removed, "", "removed");
    rejects::<UserList>(&users, "/users/0", "smb");
    // `leases` was optional before replies were typed; the server always sends it.
    rejects::<ShareUsers>(&share_settings(), "", "leases");
    rejects::<ShareUsers>(&share_settings(), "/users/0", "password_sealed_hex");
}

#[test]
fn cli_documents_round_trip_and_refuse_missing_or_misspelled_fields() {
    round_trip_doc(heal_status());
    round_trip_doc(HealStatus {
        healed: true,
        bytes_left: 0,
        eta_s: None,
        pgs_behind: 0,
        pgs: vec![],
        unreachable_nodes: vec![],
        ..heal_status()
    });
    round_trip_doc(attrs());
    let listing = Listing {
        path: "v/dir".into(),
        entries: vec![ListEntry {
            name: "hello.txt".into(),
            attr: attrs(),
        }],
    };
    round_trip_doc(listing.clone());
    let put = PutSummary {
        put: "v/a".into(),
        bytes: 13,
        attr: attrs(),
    };
    round_trip_doc(put.clone());
    let get = GetSummary {
        get: "v/a".into(),
        bytes: 13,
        local: "/tmp/a".into(),
    };
    round_trip_doc(get.clone());
    let rm = RmSummary {
        removed: "v/a".into(),
        entries: 4,
    };
    round_trip_doc(rm.clone());
    let mkdir = MkdirSummary {
        created: "v/d".into(),
        attr: attrs(),
    };
    round_trip_doc(mkdir.clone());
    let error = ErrorReport {
        error: "no such file".into(),
    };
    round_trip_doc(error.clone());

    rejects_doc(&heal_status(), "", "bytes_left");
    rejects_doc(&heal_status(), "/pgs/0", "reported");
    // The target's own fields sit beside the reported ones (flattened).
    rejects_doc(&heal_status(), "/pgs/0/targets/0", "bytes_copied");
    rejects_doc(&heal_status(), "/pgs/0/targets/0", "brick");
    rejects_doc(&heal_status(), "/unreachable_nodes/0", "error");
    rejects_doc(&attrs(), "", "size");
    rejects_doc(&listing, "/entries/0", "name");
    rejects_doc(&listing, "/entries/0", "kind");
    rejects_doc(&put, "", "bytes");
    rejects_doc(&get, "", "local");
    rejects_doc(&rm, "", "entries");
    rejects_doc(&mkdir, "/attr", "fid");
    rejects_doc(&error, "", "error");
}

#[test]
fn cli_documents_keep_the_field_names_scripts_read() {
    let doc = serde_json::to_value(heal_status()).expect("encode");
    for field in ["bytes_left", "healed", "copied_total_bytes", "bytes_copied"] {
        assert!(doc.get(field).is_some(), "heal status has {field}");
    }
    let target = &doc["pgs"][0]["targets"][0];
    for field in ["bytes_left", "state", "brick", "eta_s", "member", "files"] {
        assert!(target.get(field).is_some(), "a heal target has {field}");
    }
    let doc = serde_json::to_value(can_stop()).expect("encode");
    assert!(doc["can_stop"].is_boolean() && doc["reasons"].is_array());
    let doc = serde_json::to_value(VolumeDetail {
        volume: volume_config(),
        pgs: pgs(),
    })
    .expect("encode");
    assert_eq!(
        doc["pgs"][0]["primary"], "n1:/b/v",
        "bench/compare-gluster.sh"
    );
    assert_eq!(doc["replica"], 2, "flattened beside pgs");
    let doc = serde_json::to_value(attrs()).expect("encode");
    assert_eq!(doc["pg"], 1, "bench/compare-gluster.sh");
}
