//! An operator's data outputs: one stream, or three that each record goes
//! to one of.
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

/// Three outputs, of `A`s, `B`s and `C`s.
pub(crate) struct Three<A: 'static, B: 'static, C: 'static> {
    first: One<A>,
    second: One<B>,
    third: One<C>,
}

/// Three outputs, active.
pub(crate) struct ActiveThree<'a, A: 'static, B: 'static, C: 'static> {
    /// The first.
    pub first: ActiveOne<'a, A>,
    /// The second.
    pub second: ActiveOne<'a, B>,
    /// The third.
    pub third: ActiveOne<'a, C>,
}

impl<A: 'static, B: 'static, C: 'static> ActiveThree<'_, A, B, C> {
    /// Their ports, in order: what [`super::pending::Pending`] makes an
    /// epoch's capabilities for.
    pub fn ports(&self) -> [usize; 3] {
        [self.first.output_index(), self.second.output_index(), self.third.output_index()]
    }
}

impl<A: 'static, B: 'static, C: 'static> Outputs for Three<A, B, C> {
    type Streams<'scope> = (StreamVec<'scope, u64, A>, StreamVec<'scope, u64, B>, StreamVec<'scope, u64, C>);
    type Active<'a> = ActiveThree<'a, A, B, C>;

    fn new<'scope>(builder: &mut OperatorBuilder<'scope, u64>) -> (Self, Self::Streams<'scope>) {
        let (first, first_stream) = One::new(builder);
        let (second, second_stream) = One::new(builder);
        let (third, third_stream) = One::new(builder);
        (Three { first, second, third }, (first_stream, second_stream, third_stream))
    }

    fn activate(&mut self) -> Self::Active<'_> {
        ActiveThree { first: self.first.activate(), second: self.second.activate(), third: self.third.activate() }
    }
}
