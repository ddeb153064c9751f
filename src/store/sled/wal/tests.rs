//! Tests of the write-ahead log.

use super::*;

fn record(key: &str, value: &str) -> Vec<u8> {
    let mut ops = Vec::new();
    put_insert(&mut ops, key.as_bytes(), value.as_bytes());
    put_remove(&mut ops, b"gone");
    ops
}

/// Replays `dir` after `applied` and returns each record as "lsn:key=value".
fn replayed(dir: &Path, applied: Lsn, accept: bool) -> Result<(Lsn, Vec<String>), WalError> {
    let mut seen = Vec::new();
    let last = replay(dir, applied, accept, |lsn, ops| {
        for op in ops {
            match op {
                LogOp::Insert(k, v) => seen.push(format!(
                    "{lsn}:{}={}",
                    String::from_utf8_lossy(k),
                    String::from_utf8_lossy(v)
                )),
                LogOp::Remove(k) => assert_eq!(k, b"gone"),
                LogOp::Body => seen.push(format!("{lsn}:body")),
            }
        }
        Ok(())
    })?;
    Ok((last, seen))
}

/// Ends a group as the writer does: synced, then a new segment begun if this one is full.
fn sync(wal: &mut Wal) {
    wal.sync().unwrap();
    wal.prepare().unwrap();
}

fn open(dir: &Path, last: Lsn, segment_bytes: u64) -> (Wal, Arc<Segments>) {
    let segments = Arc::new(Segments::new(dir));
    let wal = Wal::start(dir, last, segments.clone(), segment_bytes, |_| true).unwrap();
    (wal, segments)
}

#[test]
fn records_and_bodies_come_back_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, segments) = open(dir.path(), 0, SEGMENT_BYTES);
    wal.append(1, &record("a", "1"));
    let body = wal.append_body(b"the first body");
    wal.append(3, &record("b", "2"));
    sync(&mut wal);
    let later = wal.append_body(&[7u8; 3000]);
    sync(&mut wal);
    assert_eq!(segments.read(body).unwrap(), b"the first body");
    assert_eq!(segments.read(later).unwrap(), vec![7u8; 3000]);
    let entry = body.entry([7, 9]);
    assert_eq!(Pointer::decode(&entry), Some(body));
    assert_eq!(entry_seqs(&entry).collect::<Vec<_>>(), [7, 9]);
    assert_eq!(entry_seqs(&body.entry([])).count(), 0);
    assert_eq!(Pointer::decode(&entry[..entry.len() - 1]), None);
    assert_eq!(Pointer::decode(b"not an entry"), None);
    let (last, seen) = replayed(dir.path(), 0, false).unwrap();
    assert_eq!(last, 4);
    assert_eq!(seen, ["1:a=1", "2:body", "3:b=2", "4:body"]);
    // Records sled already holds are skipped.
    assert_eq!(
        replayed(dir.path(), 2, false).unwrap().1,
        ["3:b=2", "4:body"]
    );
}

#[test]
fn a_segment_names_the_bodies_it_holds() {
    let dir = tempfile::tempdir().unwrap();
    // Segments of 100 bytes: the first group fills one, the second begins another.
    let (mut wal, _) = open(dir.path(), 0, 100);
    let first = wal.append_body(&[1u8; 80]);
    let second = wal.append_body(b"two");
    let mut ops = Vec::new();
    put_insert(&mut ops, b"Eone", &first.entry([]));
    put_insert(&mut ops, b"Etwo", &second.entry([]));
    put_insert(&mut ops, b"other", b"not a pointer");
    wal.append(3, &ops);
    sync(&mut wal);
    // A pointer into an older segment, as a later record may hold: not this segment's.
    let third = wal.append_body(b"three");
    let mut ops = Vec::new();
    put_insert(&mut ops, b"Ethree", &third.entry([]));
    put_insert(&mut ops, b"Eone", &first.entry([]));
    wal.append(5, &ops);
    sync(&mut wal);

    let found = bodies_in(dir.path(), 1).unwrap();
    assert_eq!(
        found.bytes,
        std::fs::metadata(segment_path(dir.path(), 1))
            .unwrap()
            .len()
    );
    assert_eq!(
        found.bodies,
        [(b"Eone".to_vec(), first), (b"Etwo".to_vec(), second)]
    );
    assert_eq!(
        bodies_in(dir.path(), 4).unwrap().bodies,
        [(b"Ethree".to_vec(), third)]
    );
    assert_eq!(checkpointed_segments(dir.path(), 3).unwrap(), [1]);
    assert_eq!(
        checkpointed_segments(dir.path(), 2).unwrap(),
        Vec::<Lsn>::new()
    );
    assert_eq!(checkpointed_segments(dir.path(), 5).unwrap(), [1, 4]);
}

#[test]
fn an_unfinished_record_at_the_end_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(dir.path(), 0, SEGMENT_BYTES);
    wal.append(1, &record("a", "1"));
    wal.append(2, &record("b", "2"));
    sync(&mut wal);
    let path = segment_path(dir.path(), 1);
    let whole = std::fs::metadata(&path).unwrap().len();
    // A crash in the middle of writing the third record.
    let mut third = Vec::new();
    wal.append(3, &record("c", "3"));
    std::mem::swap(&mut third, &mut wal.buf);
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(&third[..third.len() - 4]).unwrap();
    let (last, seen) = replayed(dir.path(), 0, false).unwrap();
    assert_eq!(
        (last, seen),
        (2, vec!["1:a=1".to_owned(), "2:b=2".to_owned()])
    );
    assert_eq!(std::fs::metadata(&path).unwrap().len(), whole);
}

#[test]
fn damage_before_the_end_is_refused_unless_accepted() {
    let dir = tempfile::tempdir().unwrap();
    // Tiny segments: every sync begins a new one.
    let (mut wal, _) = open(dir.path(), 0, 1);
    for lsn in 1..=3 {
        wal.append(lsn, &record(&format!("k{lsn}"), "v"));
        sync(&mut wal);
    }
    assert_eq!(segments(dir.path()).unwrap().len(), 4);
    let second = segment_path(dir.path(), 2);
    let mut bytes = std::fs::read(&second).unwrap();
    let at = bytes.len() - 1;
    bytes[at] ^= 0xFF;
    std::fs::write(&second, bytes).unwrap();
    let err = replayed(dir.path(), 0, false).unwrap_err().to_string();
    assert!(
        err.contains("00000000000000000002.log") && err.contains("unreadable record at byte 0"),
        "{err}"
    );
    assert_eq!(
        replayed(dir.path(), 0, true).unwrap(),
        (1, vec!["1:k1=v".to_owned()])
    );
}

#[test]
fn missing_records_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(dir.path(), 0, 1);
    for lsn in 1..=3 {
        wal.append(lsn, &record(&format!("k{lsn}"), "v"));
        sync(&mut wal);
    }
    std::fs::remove_file(segment_path(dir.path(), 2)).unwrap();
    let err = replayed(dir.path(), 0, false).unwrap_err().to_string();
    assert!(err.contains("records 2 to 2 are missing"), "{err}");
    // Once sled holds record 2, the hole does not matter.
    assert_eq!(replayed(dir.path(), 2, false).unwrap().1, ["3:k3=v"]);
}

#[test]
fn segments_go_once_checkpointed_and_without_live_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, segments) = open(dir.path(), 0, 1);
    let mut bodies = Vec::new();
    for n in 0..4u8 {
        bodies.push(wal.append_body(&[n; 10]));
        sync(&mut wal);
    }
    let names = |dir: &Path| -> Vec<Lsn> {
        super::segments(dir)
            .unwrap()
            .into_iter()
            .map(|(f, _)| f)
            .collect()
    };
    assert_eq!(names(dir.path()), [1, 2, 3, 4, 5]);
    // Segment 2 still holds a live body; the checkpoint has not reached segment 4.
    wal.retire(3, |s| s == 2);
    assert_eq!(names(dir.path()), [2, 4, 5]);
    assert_eq!(segments.read(bodies[1]).unwrap(), [1u8; 10]);
    assert!(segments.read(bodies[0]).is_err());
    wal.retire(4, |_| false);
    assert_eq!(names(dir.path()), [5]);
    // A new start keeps only what `keep` names, and continues the numbering.
    drop(wal);
    let (mut wal, _) = open(dir.path(), 4, 1);
    wal.append(5, &record("a", "1"));
    sync(&mut wal);
    assert_eq!(
        replayed(dir.path(), 4, false).unwrap(),
        (5, vec!["5:a=1".to_owned()])
    );
}

/// A record the crash tore in the group being written is cut off, even when records of that
/// same group after it made it to disk (pages written out of order): they were never synced,
/// so never acknowledged.
#[test]
fn a_torn_last_group_is_cut_even_past_its_surviving_records() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(dir.path(), 0, SEGMENT_BYTES);
    wal.append(1, &record("a", "1"));
    sync(&mut wal);
    let path = segment_path(dir.path(), 1);
    let synced = std::fs::metadata(&path).unwrap().len();
    for lsn in 2..=4 {
        wal.append(lsn, &record(&format!("k{lsn}"), "v"));
    }
    let mut group = std::mem::take(&mut wal.buf);
    // The second of the three records never reached the disk.
    let one = group.len() / 3;
    group[one..2 * one].fill(0);
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(&group).unwrap();
    let (last, seen) = replayed(dir.path(), 0, false).unwrap();
    assert_eq!(
        (last, seen),
        (2, vec!["1:a=1".to_owned(), "2:k2=v".to_owned()])
    );
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        synced + one as u64,
        "cut where the damage begins"
    );
}

/// Damage to a record that a later group was synced after is not a torn tail: the records
/// behind it were acknowledged, so the log is refused rather than cut (which would drop
/// them). Guards `synced_past`: without it this log is cut at the damaged record.
#[test]
fn damage_followed_by_a_synced_group_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(dir.path(), 0, SEGMENT_BYTES);
    wal.append(1, &record("a", "1"));
    sync(&mut wal);
    wal.append(2, &record("b", "2"));
    sync(&mut wal);
    let path = segment_path(dir.path(), 1);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[HEADER + 2] ^= 0xFF;
    std::fs::write(&path, &bytes).unwrap();
    let err = replayed(dir.path(), 0, false).unwrap_err().to_string();
    assert!(
        err.contains("unreadable record at byte 0") && err.contains("record 2 at byte"),
        "{err}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "nothing cut");
    assert_eq!(replayed(dir.path(), 0, true).unwrap(), (0, vec![]));
}
