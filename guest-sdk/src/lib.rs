//! Write Weir stream operators in Rust.
//!
//! An operator is a struct implementing [`Operator`], exported with
//! [`export_operator!`]; a stateless map or filter is one [`stateless!`]
//! call. The crate hides the component bindings and the batch layout: records
//! arrive one at a time through [`Operator::process`], keyed value state is
//! read and written through [`Context::get`] and [`Context::set`], and outputs
//! go through [`Context::emit`].
//!
//! A keyed counter:
//!
//! ```no_run
//! use weir_sdk::{Context, Operator, Record, Result, Setup, ValueState};
//!
//! struct Count {
//!     count: ValueState<u64>,
//! }
//!
//! impl Operator for Count {
//!     fn init(setup: &mut Setup) -> Result<Self> {
//!         Ok(Count { count: setup.value_state("count") })
//!     }
//!
//!     fn process(&mut self, record: Record<'_>, ctx: &mut Context<'_>) -> Result<()> {
//!         let n = ctx.get(&self.count)?.unwrap_or(0) + 1;
//!         ctx.set(&self.count, &n);
//!         ctx.emit(record.key, n.to_string());
//!         Ok(())
//!     }
//! }
//!
//! weir_sdk::export_operator!(Count);
//! ```
//!
//! Semantics a user can rely on:
//! - Keyed state is scoped to the key of the record (or timer) being handled;
//!   a later record of the same key in the same batch sees earlier writes.
//! - `emit` stamps the output with the input record's timestamp unless
//!   [`Context::emit_at`] names another; the key may change (re-keying).
//! - Returning an error fails the batch: the host reports it with the
//!   operator's name and the job's restart strategy decides what happens next.

mod runtime;
mod value;
mod window;

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "operator",
        path: "wit",
        pub_export_macro: true,
        export_macro_name: "__export_operator_world",
        default_bindings_module: "weir_sdk::bindings",
    });
}

pub use runtime::{
    Context, ListState, LogLevel, MapState, Record, Setup, SideOutput, TimeDomain, Timer,
    ValueState,
};
pub use value::StateValue;
#[doc(hidden)]
pub use window::WindowStep;
pub use window::{Aggregate, Window, Windowed};

/// Any error a user function may return; `?` converts most errors into it.
pub type Error = Box<dyn std::error::Error + Send + Sync>;
/// The result type of operator callbacks.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[doc(hidden)]
pub mod __private {
    pub use crate::runtime::{Instance, init, on_timer, process, window};
}

/// A stream operator. Only [`Operator::init`] and [`Operator::process`] are
/// required; timers call [`Operator::on_timer`].
pub trait Operator: Sized + 'static {
    /// Declares the operator's state and side outputs, reads its config, and
    /// builds the operator. Called once per parallel instance.
    fn init(setup: &mut Setup) -> Result<Self>;

    /// Handles one record.
    fn process(&mut self, record: Record<'_>, ctx: &mut Context<'_>) -> Result<()>;

    /// Handles a timer that this operator registered for `timer.key`.
    fn on_timer(&mut self, timer: Timer<'_>, ctx: &mut Context<'_>) -> Result<()> {
        let _ = (timer, ctx);
        Ok(())
    }

    /// One step of a host-managed window; only [`Windowed`] handles these.
    #[doc(hidden)]
    fn window(
        &mut self,
        step: WindowStep<'_>,
        window: Window<'_>,
        ctx: &mut Context<'_>,
    ) -> Result<()> {
        let _ = (step, window, ctx);
        Err(
            "the job spec gives this operator a window, but the module is not a window \
             aggregate (export it with weir_sdk::export_aggregate!)"
                .into(),
        )
    }
}

/// Exports a type implementing [`Operator`] as the component's operator.
#[macro_export]
macro_rules! export_operator {
    ($operator:ty) => {
        const _: () = {
            struct WeirGuest;

            ::std::thread_local! {
                static INSTANCE: $crate::__private::Instance<$operator> =
                    $crate::__private::Instance::new();
            }

            impl $crate::bindings::Guest for WeirGuest {
                fn init(
                    config: ::std::vec::Vec<u8>,
                ) -> ::std::result::Result<
                    $crate::bindings::weir::operator::types::OperatorInfo,
                    ::std::string::String,
                > {
                    INSTANCE.with(|i| $crate::__private::init(i, config))
                }

                fn process(
                    batch: ::std::vec::Vec<u8>,
                ) -> ::std::result::Result<::std::vec::Vec<u8>, ::std::string::String> {
                    INSTANCE.with(|i| $crate::__private::process(i, batch))
                }

                fn on_timer(
                    batch: ::std::vec::Vec<u8>,
                ) -> ::std::result::Result<::std::vec::Vec<u8>, ::std::string::String> {
                    INSTANCE.with(|i| $crate::__private::on_timer(i, batch))
                }

                fn window(
                    batch: ::std::vec::Vec<u8>,
                ) -> ::std::result::Result<::std::vec::Vec<u8>, ::std::string::String> {
                    INSTANCE.with(|i| $crate::__private::window(i, batch))
                }
            }

    $crate::bindings::__export_operator_world!(WeirGuest with_types_in $crate::bindings);
        };
    };
}

/// Exports a type implementing [`Aggregate`] as a window aggregate: the job
/// spec's `window:` on the operator says which windows.
#[macro_export]
macro_rules! export_aggregate {
    ($aggregate:ty) => {
        $crate::export_operator!($crate::Windowed<$aggregate>);
    };
}

/// A stateless operator from one closure `|record, ctx| -> Result<()>`:
/// a map, a filter, a flat-map, or a re-keying step.
///
/// ```no_run
/// weir_sdk::stateless!(|record, ctx| {
///     let n: u64 = std::str::from_utf8(record.value)?.trim().parse()?;
///     if n % 2 == 0 { ctx.emit(record.key, (n + 1).to_string()); }
///     Ok(())
/// });
/// ```
#[macro_export]
macro_rules! stateless {
    ($body:expr) => {
        struct WeirStateless;

        impl $crate::Operator for WeirStateless {
            fn init(_: &mut $crate::Setup) -> $crate::Result<Self> {
                Ok(WeirStateless)
            }

            fn process(
                &mut self,
                record: $crate::Record<'_>,
                ctx: &mut $crate::Context<'_>,
            ) -> $crate::Result<()> {
                let f: fn($crate::Record<'_>, &mut $crate::Context<'_>) -> $crate::Result<()> =
                    $body;
                f(record, ctx)
            }
        }

        $crate::export_operator!(WeirStateless);
    };
}
