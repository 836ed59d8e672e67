//! A plugin that overrides nothing: every export must behave like the host's
//! built-in behaviour.

struct Defaults;
impl presence_guest::Plugin for Defaults {}
presence_guest::export_plugin!(Defaults);
