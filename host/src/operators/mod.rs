//! Built-in native operators: the same logic as the example Wasm operators,
//! compiled into the host, so a benchmark can run both through the same
//! runtime path and report the ratio. They use the same state backend calls
//! and the same record layout as the Wasm path.

use crate::graph::key_group;
use crate::runtime::batch::{NO_KEY_GROUP, RecordBatch};
use crate::runtime::operator::{FailureKind, InstanceInfo, Operator, OperatorError, Output};
use crate::state::snapshot::{KeyedSnapshot, SnapshotEntry, restore_entry};
use crate::state::{StateBackend, StateId, StateKind};

/// Names accepted by a job spec's `native:` field.
pub const NATIVE: &[&str] = &["passthrough", "keyed-count"];

pub fn build(
    name: &str,
    info: InstanceInfo,
    mut backend: Box<dyn StateBackend>,
) -> Result<Box<dyn Operator>, OperatorError> {
    match name {
        "passthrough" => Ok(Box::new(Passthrough { info })),
        "keyed-count" => {
            if !info.keyed {
                return Err(OperatorError::new(
                    &info,
                    FailureKind::Init("keyed-count needs `input: key`".into()),
                ));
            }
            let count = backend
                .register("count", StateKind::Value)
                .map_err(|e| OperatorError::new(&info, e))?;
            Ok(Box::new(KeyedCount {
                info,
                backend,
                count,
                scratch: Vec::with_capacity(8),
            }))
        }
        other => Err(OperatorError::new(
            &info,
            FailureKind::Init(format!("unknown native operator `{other}`")),
        )),
    }
}

fn read_u64(info: &InstanceInfo, bytes: &[u8]) -> Result<u64, OperatorError> {
    <[u8; 8]>::try_from(bytes)
        .map(u64::from_le_bytes)
        .map_err(|_| {
            OperatorError::new(
                info,
                FailureKind::Guest(format!("value of {} bytes is not a u64", bytes.len())),
            )
        })
}

/// value + 1, keep the even results (the `passthrough` example).
struct Passthrough {
    info: InstanceInfo,
}

impl Operator for Passthrough {
    fn restore(&mut self, _: u32, _: SnapshotEntry<'_>) -> Result<(), OperatorError> {
        Err(OperatorError::unexpected_state(&self.info))
    }

    fn process(&mut self, input: &RecordBatch, out: &mut Output) -> Result<(), OperatorError> {
        for r in input.iter() {
            let v = read_u64(&self.info, r.value)? + 1;
            if v % 2 == 0 {
                out.main.push(r.key, &v.to_le_bytes(), r.timestamp);
            }
        }
        Ok(())
    }
}

/// Per-key counter in value state, emits (key, count) (the `keyed-count` example).
struct KeyedCount {
    info: InstanceInfo,
    backend: Box<dyn StateBackend>,
    count: StateId,
    scratch: Vec<u8>,
}

impl Operator for KeyedCount {
    fn snapshot(&mut self, out: &mut KeyedSnapshot) -> Result<(), OperatorError> {
        out.add_backend(self.backend.as_mut())
            .map_err(|e| OperatorError::new(&self.info, e))
    }

    fn restore(&mut self, key_group: u32, entry: SnapshotEntry<'_>) -> Result<(), OperatorError> {
        match entry {
            SnapshotEntry::State(e) => restore_entry(self.backend.as_mut(), key_group, e)
                .map_err(|e| OperatorError::new(&self.info, e)),
            SnapshotEntry::Timer { .. } => Err(OperatorError::unexpected_state(&self.info)),
        }
    }

    fn process(&mut self, input: &RecordBatch, out: &mut Output) -> Result<(), OperatorError> {
        for r in input.iter() {
            let group = if r.key_group == NO_KEY_GROUP {
                key_group(r.key, self.info.max_parallelism)
            } else {
                r.key_group
            };
            self.scratch.clear();
            let found = self
                .backend
                .value_get_into(self.count, group, r.key, &mut self.scratch)
                .map_err(|e| OperatorError::new(&self.info, e))?;
            let count = if found {
                read_u64(&self.info, &self.scratch)? + 1
            } else {
                1
            };
            self.backend
                .value_put(self.count, group, r.key, &count.to_le_bytes())
                .map_err(|e| OperatorError::new(&self.info, e))?;
            out.main.push(r.key, &count.to_le_bytes(), r.timestamp);
        }
        Ok(())
    }
}
