//! An operator's data outputs: one stream, or several that each record
//! goes to one of.
//!
//! An operator whose records go three ways once emitted an enum of them on
//! one stream, which an operator after it split: each record was written
//! into a container, read out of it and written into another, records of
//! about 150 bytes. For the two stages that did so with every event, that
//! was 550 instructions an event of the in-process bench. With three
//! outputs of its own, an operator writes each record once, where it goes.

use timely::container::CapacityContainerBuilder;
use timely::dataflow::StreamVec;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::{OutputBuilder, OutputBuilderSession};

/// The data outputs of an operator, made with it and activated each time its
/// logic runs.
pub(crate) trait Outputs: Sized + 'static {
    /// The streams they make.
    type Streams<'scope>;
    /// What the operator's logic writes to.
    type Active<'a>;

    /// Makes the outputs on `builder`.
    fn new<'scope>(builder: &mut OperatorBuilder<'scope, u64>) -> (Self, Self::Streams<'scope>);

    /// The outputs, to write to.
    fn activate(&mut self) -> Self::Active<'_>;
}

/// One output of `O`s.
pub(crate) type One<O> = OutputBuilder<u64, CapacityContainerBuilder<Vec<O>>>;

/// One output, active.
pub(crate) type ActiveOne<'a, O> = OutputBuilderSession<'a, u64, CapacityContainerBuilder<Vec<O>>>;

impl<O: 'static> Outputs for One<O> {
    type Streams<'scope> = StreamVec<'scope, u64, O>;
    type Active<'a> = ActiveOne<'a, O>;

    fn new<'scope>(builder: &mut OperatorBuilder<'scope, u64>) -> (Self, Self::Streams<'scope>) {
        let (output, stream) = builder.new_output();
        (OutputBuilder::from(output), stream)
    }

    fn activate(&mut self) -> Self::Active<'_> {
        OutputBuilder::activate(self)
    }
}

/// Outputs that each record goes to one of: a tuple of [`One`]s, active as
/// the tuple of their sessions.
macro_rules! outputs_of_a_tuple {
    ($count:literal; $($record:ident $index:tt),+) => {
        impl<$($record: 'static),+> Outputs for ($(One<$record>,)+) {
            type Streams<'scope> = ($(StreamVec<'scope, u64, $record>,)+);
            type Active<'a> = ($(ActiveOne<'a, $record>,)+);

            fn new<'scope>(builder: &mut OperatorBuilder<'scope, u64>) -> (Self, Self::Streams<'scope>) {
                let made = ($(<One<$record>>::new(builder),)+);
                (($(made.$index.0,)+), ($(made.$index.1,)+))
            }

            fn activate(&mut self) -> Self::Active<'_> {
                ($(self.$index.activate(),)+)
            }
        }

        impl<$($record: 'static),+> Ports<$count> for ($(ActiveOne<'_, $record>,)+) {
            fn ports(&self) -> [usize; $count] {
                [$(self.$index.output_index()),+]
            }
        }
    };
}

/// The ports of active outputs, in order: what [`super::pending::Pending`]
/// makes an epoch's capabilities for.
pub(crate) trait Ports<const N: usize> {
    /// Their ports.
    fn ports(&self) -> [usize; N];
}

outputs_of_a_tuple!(3; A 0, B 1, C 2);
outputs_of_a_tuple!(4; A 0, B 1, C 2, D 3);
