//! Training curves and confusion matrices as PNG and SVG (plotters), like the reference's
//! `plt.plot`. Text is drawn with a bundled ASCII subset of DejaVu Sans (10 KiB), so plots
//! look the same everywhere and need no system fonts.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::register_font;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::atomic::write_atomic;
use crate::data::CLASSES;
use crate::model::Layout;
use crate::train::{EpochReport, GradNorms};

const FONT: &[u8] = include_bytes!("assets/DejaVuSans-subset.ttf");
const SIZE: (u32, u32) = (800, 500);

#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("{}: cannot draw: {message}", path.display())]
    Draw { path: PathBuf, message: String },
    #[error("{}: cannot write: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
}

/// Rows are true classes, columns predicted ones.
pub type Confusion = [[u64; CLASSES]; CLASSES];

/// Writes `accuracy.{png,svg}` and `loss.{png,svg}` into `dir`.
pub fn curves(dir: &Path, history: &[EpochReport]) -> Result<(), PlotError> {
    let accuracy: Vec<(f64, f64)> = history.iter().map(|r| (r.epoch as f64, r.test.accuracy)).collect();
    let train: Vec<(f64, f64)> = history.iter().map(|r| (r.epoch as f64, r.train_loss)).collect();
    let test: Vec<(f64, f64)> = history.iter().map(|r| (r.epoch as f64, r.test.loss)).collect();
    let acc_series = [("test accuracy (%)", &accuracy[..], BLUE)];
    write_both(&dir.join("accuracy"), &LineChart { title: "Accuracy on test set", series: &acc_series })?;
    let loss_series = [("train loss", &train[..], RED), ("test loss", &test[..], BLUE)];
    write_both(&dir.join("loss"), &LineChart { title: "Loss", series: &loss_series })
}

/// Writes `<stem>.{png,svg}`: the test accuracy of several runs, one named curve each.
pub fn accuracies(stem: &Path, title: &str, runs: &[(String, &[EpochReport])]) -> Result<(), PlotError> {
    let points: Vec<Vec<(f64, f64)>> =
        runs.iter().map(|(_, h)| h.iter().map(|r| (r.epoch as f64, r.test.accuracy)).collect()).collect();
    let series: Vec<Series> = runs
        .iter()
        .zip(&points)
        .enumerate()
        .map(|(i, ((name, _), p))| {
            let (r, g, b) = Palette99::pick(i).rgb();
            (name.as_str(), &p[..], RGBColor(r, g, b))
        })
        .collect();
    write_both(stem, &LineChart { title, series: &series })
}

/// Writes `grad_norms.{png,svg}` into `dir`: each weight tensor's gradient norm against the
/// step, on a log scale, coloured from the input (blue) to the output (orange).
pub fn grad_norms(dir: &Path, layout: &Layout, records: &[GradNorms]) -> Result<(), PlotError> {
    let weights: Vec<(usize, &str)> = layout
        .tensors
        .iter()
        .enumerate()
        .filter(|(_, t)| t.name.ends_with(".weight"))
        .map(|(i, t)| (i, t.name.trim_end_matches(".weight")))
        .collect();
    // Zero norms (a dead layer) have no place on a log axis, nor those of a diverged run.
    let points: Vec<Vec<(f64, f64)>> = weights
        .iter()
        .map(|&(i, _)| {
            let positive = records.iter().filter(|r| r.norms[i] > 0.0 && r.norms[i].is_finite());
            positive.map(|r| (r.step as f64, f64::from(r.norms[i]).log10())).collect()
        })
        .collect();
    let last = weights.len().saturating_sub(1).max(1) as f64;
    let series: Vec<Series> = weights
        .iter()
        .zip(&points)
        .enumerate()
        .map(|(k, (&(_, name), p))| (name, &p[..], blend(INPUT_END, OUTPUT_END, k as f64 / last)))
        .collect();
    write_both(&dir.join("grad_norms"), &LogChart { title: "Gradient L2 norm per layer", series: &series })
}

const INPUT_END: RGBColor = RGBColor(31, 58, 147);
const OUTPUT_END: RGBColor = RGBColor(230, 85, 13);

fn blend(a: RGBColor, b: RGBColor, t: f64) -> RGBColor {
    let mix = |a: u8, b: u8| (f64::from(a) + (f64::from(b) - f64::from(a)) * t).round() as u8;
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// Writes `<stem>.png` and `<stem>.svg` of a confusion matrix.
pub fn confusion(stem: &Path, title: &str, matrix: &Confusion) -> Result<(), PlotError> {
    write_both(stem, &ConfusionChart { title, matrix })
}

type Series<'a> = (&'a str, &'a [(f64, f64)], RGBColor);
type DrawResult<DB> = Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

/// A picture that any plotters backend can draw.
trait Picture {
    fn draw<DB: DrawingBackend>(&self, root: DrawingArea<DB, Shift>) -> DrawResult<DB>;
}

/// Draws the same picture into a PNG and an SVG beside each other.
fn write_both(stem: &Path, picture: &impl Picture) -> Result<(), PlotError> {
    static FONT_ONCE: Once = Once::new();
    // The font is compiled in and parsed by every plotting test, so failure is a build bug.
    FONT_ONCE.call_once(|| assert!(register_font("sans-serif", FontStyle::Normal, FONT).is_ok(), "bundled font"));
    let (png, svg) = (stem.with_extension("png"), stem.with_extension("svg"));
    let mut pixels = vec![0u8; (SIZE.0 * SIZE.1 * 3) as usize];
    picture.draw(BitMapBackend::with_buffer(&mut pixels, SIZE).into_drawing_area()).map_err(|e| draw_error(&png, e))?;
    let image = image::RgbImage::from_raw(SIZE.0, SIZE.1, pixels).expect("buffer fits the size");
    let mut encoded = Cursor::new(Vec::new());
    image.write_to(&mut encoded, image::ImageFormat::Png).map_err(|e| draw_error(&png, e))?;
    write_atomic(&png, encoded.get_ref()).map_err(|source| PlotError::Write { path: png, source })?;
    let mut text = String::new();
    picture.draw(SVGBackend::with_string(&mut text, SIZE).into_drawing_area()).map_err(|e| draw_error(&svg, e))?;
    write_atomic(&svg, text.as_bytes()).map_err(|source| PlotError::Write { path: svg, source })
}

fn draw_error(path: &Path, e: impl std::fmt::Display) -> PlotError {
    PlotError::Draw { path: path.into(), message: e.to_string() }
}

struct LineChart<'a> {
    title: &'a str,
    series: &'a [Series<'a>],
}

impl Picture for LineChart<'_> {
    fn draw<DB: DrawingBackend>(&self, root: DrawingArea<DB, Shift>) -> DrawResult<DB> {
        line_chart(root, self.title, self.series)
    }
}

/// Lines against the training step on a log-scale y axis (the series hold `log10` values),
/// named in a column on the right; with many lines, only some are named.
struct LogChart<'a> {
    title: &'a str,
    series: &'a [Series<'a>],
}

/// Legend entries a chart has room for, and the width of its legend column.
const MAX_LEGEND: usize = 18;
const LEGEND_WIDTH: u32 = 170;
const MAX_DECADE_LABELS: usize = 20;

impl Picture for LogChart<'_> {
    fn draw<DB: DrawingBackend>(&self, root: DrawingArea<DB, Shift>) -> DrawResult<DB> {
        root.fill(&WHITE)?;
        // The legend gets its own column: over the plot it would hide the smallest norms.
        let (plot, legend) = root.split_horizontally(SIZE.0 - LEGEND_WIDTH);
        let points = self.series.iter().flat_map(|s| s.1.iter());
        let last_step = points.clone().map(|p| p.0).fold(1.0, f64::max);
        let (lo, hi) = points.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| (lo.min(p.1), hi.max(p.1)));
        let (lo, hi) = if lo <= hi { (lo.floor(), hi.ceil().max(lo.floor() + 1.0)) } else { (-8.0, 0.0) };
        // One label per power of ten, or per second or third one on a tall axis.
        let decades = (hi - lo) as usize;
        let mut chart = ChartBuilder::on(&plot)
            .caption(self.title, ("sans-serif", 24))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..last_step, lo..hi)?;
        chart
            .configure_mesh()
            .x_desc("step")
            .light_line_style(WHITE)
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_labels(decades.div_ceil(decades.div_ceil(MAX_DECADE_LABELS)) + 1)
            .y_label_formatter(&|v| if v.fract() == 0.0 { format!("1e{v:.0}") } else { String::new() })
            .label_style(("sans-serif", 15))
            .draw()?;
        for &(_, data, color) in self.series {
            chart.draw_series(LineSeries::new(data.iter().copied(), color.stroke_width(1)))?;
        }
        let every = self.series.len().div_ceil(MAX_LEGEND).max(1);
        let named = self.series.iter().enumerate().filter(|(k, _)| k % every == 0 || k + 1 == self.series.len());
        for (row, (_, &(name, _, color))) in named.enumerate() {
            let y = 60 + 22 * row as i32;
            legend.draw(&PathElement::new([(5, y), (25, y)], color.stroke_width(2)))?;
            legend.draw(&Text::new(name.to_string(), (30, y - 7), ("sans-serif", 13)))?;
        }
        root.present()
    }
}

struct ConfusionChart<'a> {
    title: &'a str,
    matrix: &'a Confusion,
}

impl Picture for ConfusionChart<'_> {
    fn draw<DB: DrawingBackend>(&self, root: DrawingArea<DB, Shift>) -> DrawResult<DB> {
        confusion_chart(root, self.title, self.matrix)
    }
}

fn line_chart<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, title: &str, series: &[Series]) -> DrawResult<DB> {
    root.fill(&WHITE)?;
    let points = series.iter().flat_map(|s| s.1.iter());
    let last_epoch = points.clone().map(|p| p.0).fold(2.0, f64::max);
    let (lo, hi) = value_range(points.map(|p| p.1));
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(1.0..last_epoch, lo..hi)?;
    // Whole epochs only: a tick at 1.5 epochs would suggest a measurement that was not made.
    let whole = |x: &f64| if x.fract() == 0.0 { format!("{x:.0}") } else { String::new() };
    chart
        .configure_mesh()
        .x_desc("epoch")
        .x_labels(last_epoch as usize)
        .x_label_formatter(&whole)
        .light_line_style(WHITE)
        .label_style(("sans-serif", 15))
        .draw()?;
    for &(name, data, color) in series {
        // A diverged run's NaN and infinite values have no place on the axis: they are left out.
        let finite: Vec<(f64, f64)> = data.iter().copied().filter(|p| p.1.is_finite()).collect();
        chart.draw_series(LineSeries::new(finite.iter().copied(), color.stroke_width(2)))?;
        chart
            .draw_series(finite.iter().map(|&p| Circle::new(p, 3, color.filled())))?
            .label(name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    root.present()
}

fn confusion_chart<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, title: &str, m: &Confusion) -> DrawResult<DB> {
    root.fill(&WHITE)?;
    let classes = CLASSES as u32;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(45)
        // A segmented range covers both ends, so 0..classes - 1 has one segment per class.
        .build_cartesian_2d((0..classes - 1).into_segmented(), (0..classes - 1).into_segmented())?;
    // Row 0 at the top, as confusion matrices are usually read.
    let row_label = |v: &SegmentValue<u32>| match v {
        SegmentValue::CenterOf(y) if *y < classes => (classes - 1 - y).to_string(),
        _ => String::new(),
    };
    let col_label = |v: &SegmentValue<u32>| match v {
        SegmentValue::CenterOf(x) if *x < classes => x.to_string(),
        _ => String::new(),
    };
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc("predicted")
        .y_desc("true")
        .x_label_formatter(&col_label)
        .y_label_formatter(&row_label)
        .label_style(("sans-serif", 15))
        .draw()?;
    for (row, counts) in m.iter().enumerate() {
        let total = counts.iter().sum::<u64>().max(1) as f64;
        for (col, &count) in counts.iter().enumerate() {
            let (x, y) = (col as u32, classes - 1 - row as u32);
            let share = count as f64 / total;
            let fill = RGBColor(255 - (share * 225.0) as u8, 255 - (share * 155.0) as u8, 255);
            let cell = [
                (SegmentValue::Exact(x), SegmentValue::Exact(y)),
                (SegmentValue::Exact(x + 1), SegmentValue::Exact(y + 1)),
            ];
            chart.draw_series([Rectangle::new(cell, fill.filled())])?;
            let ink = if share > 0.5 { WHITE } else { BLACK };
            let style = ("sans-serif", 13).into_font().color(&ink).pos(Pos::new(HPos::Center, VPos::Center));
            let at = (SegmentValue::CenterOf(x), SegmentValue::CenterOf(y));
            chart.draw_series([Text::new(count.to_string(), at, style)])?;
        }
    }
    root.present()
}

/// The y range of a line chart over `values`, finite ones only, padded by a tenth of their
/// spread and at least 2 % of their size, so that one value or a flat line gets an axis of
/// readable ticks (97.52 % is drawn from about 95.6 to 99.5, not 97.519 to 97.521).
fn value_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) =
        values.filter(|v| v.is_finite()).fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.1).max(0.02 * lo.abs().max(hi.abs())).max(1e-3);
    (lo - pad, hi + pad)
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use super::{curves, grad_norms, value_range};
    use crate::model::Net;
    use crate::train::{EpochReport, Evaluation, GradNorms};

    /// Runs `draw` on a thread and fails if it takes more than a minute: plotters spun forever
    /// over NaN axis bounds once.
    fn finishes(draw: impl FnOnce() + Send + 'static) {
        let (done, wait) = mpsc::channel();
        std::thread::spawn(move || {
            draw();
            done.send(()).unwrap();
        });
        wait.recv_timeout(Duration::from_secs(60)).expect("the plot did not finish");
    }

    #[test]
    fn plots_of_a_diverged_or_flat_run_finish() {
        let report = |epoch, loss: f64, accuracy| EpochReport {
            epoch,
            train_loss: loss,
            test: Evaluation { loss, accuracy, correct: 0, total: 1, seconds: 0.0 },
            seconds: 1.0,
            images_per_s: 1.0,
        };
        for history in [vec![report(1, f64::NAN, 9.8), report(2, f64::INFINITY, f64::NAN)], vec![report(1, 0.3, 97.52)]]
        {
            finishes(move || {
                let dir = tempfile::tempdir().unwrap();
                curves(dir.path(), &history).expect("curves");
            });
        }
        finishes(|| {
            let dir = tempfile::tempdir().unwrap();
            let layout = Net::new().layout;
            let records: Vec<GradNorms> = [f32::NAN, f32::INFINITY, 0.5]
                .iter()
                .enumerate()
                .map(|(i, &v)| GradNorms { step: i as u64 + 1, epoch: 1, norms: vec![v; layout.tensors.len()] })
                .collect();
            grad_norms(dir.path(), &layout, &records).expect("grad norms");
        });
    }

    #[test]
    fn value_ranges_leave_out_non_finite_values_and_widen_flat_lines() {
        let (lo, hi) = value_range([97.52].into_iter());
        assert!(lo < 96.0 && hi > 99.0, "{lo}..{hi}");
        assert_eq!(value_range([f64::NAN, f64::INFINITY].into_iter()), (0.0, 1.0));
        let (lo, hi) = value_range([0.2, f64::NAN, 0.4, f64::NEG_INFINITY].into_iter());
        assert!((lo - 0.18).abs() < 1e-9 && (hi - 0.42).abs() < 1e-9, "{lo}..{hi}");
    }
}
