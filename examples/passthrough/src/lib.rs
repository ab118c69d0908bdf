//! Map and filter: value + 1, keep the even results. Values are little-endian
//! u64s, as the benchmark generator writes them.

weir_sdk::stateless!(|record, ctx| {
    let value = record.value_u64()? + 1;
    if value % 2 == 0 {
        ctx.emit(record.key, value.to_le_bytes());
    }
    Ok(())
});
