//! The states of runs, attempts and experiments, and how an attempt ends: one enum each, used
//! from the database (the `state` columns hold their lowercase names, which the migrations'
//! CHECK constraints list) through the store and the services to the CLI and the dashboard's
//! JSON. Whether something has ended is asked of `is_final`, nowhere else.

use plume_proto::v1::finish_request::Outcome as PbOutcome;
use plume_proto::v1::{
    AttemptState as PbAttemptState, ExperimentState as PbExperimentState, RunState as PbRunState,
};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArgumentBuffer, PgTypeInfo, PgValueRef, Postgres};
use std::fmt;
use std::str::FromStr;

/// Defines a lowercase-named state enum with its string form, parsing, serde and sqlx
/// (TEXT) mappings, and the conversions to and from its proto enum (whose variants
/// have the same names, plus `Unspecified`).
macro_rules! state_enum {
    ($(#[$doc:meta])* $name:ident => $pb:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
        #[serde(rename_all = "lowercase")]
        pub enum $name {
            $($(#[$vdoc])* $variant),+
        }

        impl $name {
            /// Every value, in lifecycle order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The name of a proto field's value (`unspecified` for none or an unknown number).
            pub fn name_of(v: i32) -> &'static str {
                $name::try_from(v).map_or("unspecified", |s| s.as_str())
            }

            /// The name stored in the database and shown to users.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        /// Stored as TEXT, by name.
        impl sqlx::Type<Postgres> for $name {
            fn type_info() -> PgTypeInfo {
                <&str as sqlx::Type<Postgres>>::type_info()
            }
            fn compatible(ty: &PgTypeInfo) -> bool {
                <&str as sqlx::Type<Postgres>>::compatible(ty)
            }
        }

        impl sqlx::Encode<'_, Postgres> for $name {
            fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
                <&str as sqlx::Encode<Postgres>>::encode(self.as_str(), buf)
            }
        }

        impl sqlx::Decode<'_, Postgres> for $name {
            fn decode(value: PgValueRef<'_>) -> Result<Self, BoxDynError> {
                Ok(<&str as sqlx::Decode<Postgres>>::decode(value)?.parse()?)
            }
        }

        impl From<$name> for $pb {
            fn from(s: $name) -> $pb {
                match s {
                    $($name::$variant => $pb::$variant),+
                }
            }
        }

        impl From<$name> for i32 {
            fn from(s: $name) -> i32 {
                $pb::from(s) as i32
            }
        }

        impl TryFrom<i32> for $name {
            type Error = UnknownState;
            /// A proto field's value; `Unspecified` and unknown numbers are errors.
            fn try_from(v: i32) -> Result<Self, UnknownState> {
                match $pb::try_from(v) {
                    $(Ok($pb::$variant) => Ok($name::$variant),)+
                    _ => Err(UnknownState {
                        what: stringify!($name),
                        value: v.to_string(),
                    }),
                }
            }
        }

        impl FromStr for $name {
            type Err = UnknownState;
            fn from_str(s: &str) -> Result<Self, UnknownState> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownState {
                        what: stringify!($name),
                        value: s.to_string(),
                    }),
                }
            }
        }
    };
}

/// A name that is not one of a state enum's values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {value:?}")]
pub struct UnknownState {
    /// Which enum.
    pub what: &'static str,
    /// The name given.
    pub value: String,
}

state_enum!(
    /// Where a run is in its life.
    RunState => PbRunState {
        /// Waiting for the runs it needs.
        Pending = "pending",
        /// Ready for a worker.
        Queued = "queued",
        /// Leased to a worker.
        Running = "running",
        /// Ran all its steps.
        Succeeded = "succeeded",
        /// Failed, or an upstream run did.
        Failed = "failed",
        /// Cancelled by a user.
        Cancelled = "cancelled",
        /// Stopped early by the experiment's search (ASHA did not promote it at a rung).
        Stopped = "stopped",
    }
);

impl RunState {
    /// Whether the run has ended (a rerun can still bring it back).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            RunState::Succeeded | RunState::Failed | RunState::Cancelled | RunState::Stopped
        )
    }
}

state_enum!(
    /// An experiment: running until every run has ended, then how the worst run ended.
    ExperimentState => PbExperimentState {
        /// Some run has not ended.
        Running = "running",
        /// Every run succeeded.
        Succeeded = "succeeded",
        /// Some run failed.
        Failed = "failed",
        /// None failed, some were cancelled.
        Cancelled = "cancelled",
    }
);

impl ExperimentState {
    /// Whether every run has ended.
    pub fn is_final(self) -> bool {
        self != ExperimentState::Running
    }
}

state_enum!(
    /// One attempt of a run on one worker.
    AttemptState => PbAttemptState {
        /// Its worker holds the lease.
        Running = "running",
        /// It ran the run to the end.
        Succeeded = "succeeded",
        /// The job failed.
        Failed = "failed",
        /// It stopped on a cancel.
        Cancelled = "cancelled",
        /// Its lease ran out or its worker released it; the run was requeued or ended.
        Lost = "lost",
        /// It stopped because the search did not promote its run.
        Stopped = "stopped",
    }
);

impl AttemptState {
    /// Whether the attempt has ended.
    pub fn is_final(self) -> bool {
        self != AttemptState::Running
    }
}

state_enum!(
    /// How a worker says an attempt ended.
    Outcome => PbOutcome {
        /// The job ran all its steps.
        Succeeded = "succeeded",
        /// The job failed.
        Failed = "failed",
        /// The job stopped on a cancel.
        Cancelled = "cancelled",
        /// The worker is going away: the run goes back to the queue and resumes elsewhere.
        Released = "released",
    }
);

impl Outcome {
    /// The state the run takes, when the outcome ends it (`Released` requeues it instead).
    pub fn final_run_state(self) -> Option<RunState> {
        match self {
            Outcome::Succeeded => Some(RunState::Succeeded),
            Outcome::Failed => Some(RunState::Failed),
            Outcome::Cancelled => Some(RunState::Cancelled),
            Outcome::Released => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        for s in RunState::ALL {
            assert_eq!(s.as_str().parse::<RunState>().unwrap(), *s);
        }
        for s in AttemptState::ALL {
            assert_eq!(s.as_str().parse::<AttemptState>().unwrap(), *s);
        }
        let err = "done".parse::<RunState>().unwrap_err();
        assert_eq!(err.to_string(), "unknown RunState \"done\"");
        assert_eq!(
            serde_json::to_string(&RunState::Succeeded).unwrap(),
            "\"succeeded\""
        );
    }

    #[test]
    fn only_ended_states_are_final() {
        let finals: Vec<_> = RunState::ALL.iter().filter(|s| s.is_final()).collect();
        assert_eq!(
            finals,
            [
                &RunState::Succeeded,
                &RunState::Failed,
                &RunState::Cancelled,
                &RunState::Stopped
            ]
        );
        assert!(!ExperimentState::Running.is_final());
        assert!(AttemptState::Lost.is_final());
        assert_eq!(Outcome::Released.final_run_state(), None);
        assert_eq!(Outcome::Failed.final_run_state(), Some(RunState::Failed));
    }
}
