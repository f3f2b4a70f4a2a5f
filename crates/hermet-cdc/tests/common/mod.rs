//! Loading the captured pgoutput fixtures (see tests/fixtures/capture.sh).
#![allow(dead_code)]

use hermet_cdc::Lsn;

/// One peeked row: the LSN and xid PostgreSQL reported with it, and the message bytes.
pub struct Captured {
    pub lsn: Lsn,
    pub xid: u32,
    pub bytes: Vec<u8>,
}

pub const TEXT: &str = include_str!("../fixtures/pgoutput_v1_text.txt");
pub const BINARY: &str = include_str!("../fixtures/pgoutput_v1_binary.txt");

/// The tags of the captured stream, one per message (same for both files).
pub const TAGS: &str = "BRIICBUCBUCBYRICBUCBUCBDDCBMCMBRYRTCBYRTCBORIC";

pub fn load(file: &str) -> Vec<Captured> {
    file.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let mut parts = line.split(' ');
            let lsn = parts.next().expect("lsn").parse().expect("lsn");
            let xid = parts.next().expect("xid").parse().expect("xid");
            let bytes = hex(parts.next().expect("hex"));
            assert!(parts.next().is_none(), "extra field in {line:.60}");
            Captured { lsn, xid, bytes }
        })
        .collect()
}

pub fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit"))
        .collect()
}
