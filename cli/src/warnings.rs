//! dep8's own warnings and errors (`tracing`'s, such as a backend's): a
//! run's log lines while a run takes them (`dep8_core::events::take_warnings`),
//! so that its log has them and its live display is not broken by them;
//! otherwise dep8's log lines on stderr.

use dep8_core::events::{forward_warning, Level};
use std::fmt::Write as _;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::Context;

/// The layer that takes `tracing`'s WARN and ERROR events.
pub struct Warnings;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Warnings {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let level = match *event.metadata().level() {
            tracing::Level::ERROR => Level::Error,
            tracing::Level::WARN => Level::Warning,
            _ => return,
        };
        let mut text = Text::default();
        event.record(&mut text);
        if !forward_warning(level, &text.0) {
            let line = dep8_core::report::log_line(level, &text.0, std::time::SystemTime::now());
            crate::console::write_stderr(line.as_bytes());
        }
    }
}

/// Whether `tracing`'s formatter shows an event: [`Warnings`] has the
/// warnings and errors.
pub fn formatted(metadata: &tracing::Metadata<'_>) -> bool {
    *metadata.level() > tracing::Level::WARN
}

/// An event's message, then its other fields as `name=value`.
#[derive(Default)]
struct Text(String);

impl Visit for Text {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0.insert_str(0, &format!("{value:?}"));
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn a_runs_log_gets_the_warnings_while_it_takes_them() {
        struct Lines(std::sync::Arc<std::sync::Mutex<Vec<String>>>);
        impl dep8_core::events::Observer for Lines {
            fn event(&mut self, event: &dep8_core::events::Event) {
                if let dep8_core::events::Event::Message { level, text, .. } = event {
                    self.0.lock().unwrap().push(format!("{level:?} {text}"));
                }
            }
        }
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (events, dispatcher) =
            dep8_core::events::dispatch(vec![Box::new(Lines(lines.clone()))]);
        let subscriber = tracing_subscriber::registry().with(Warnings);
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!("before the run");
            let taken = dep8_core::events::take_warnings(&events);
            tracing::info!("not a warning");
            tracing::warn!(session = "s-1", "schroot: W: {}", "stale");
            tracing::error!("broken");
            drop(taken);
            tracing::warn!("after the run");
        });
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(dispatcher.close());
        assert_eq!(
            *lines.lock().unwrap(),
            ["Warning schroot: W: stale session=\"s-1\"", "Error broken"]
        );
    }
}
