//! The mixdown's ffmpeg runs, as pure functions: the grid, the filter graphs, the argument lists,
//! and reading ffmpeg's answers (loudnorm's measurement, `-progress` lines). Unit-tested without
//! running ffmpeg; `tests/mixdown.rs` runs them.
//!
//! Input `i` of every run is track `i`'s verified output, read over HTTP. The picture is a
//! 1280x720, 30 fps canvas cut into an even grid (`cols = ceil(sqrt(n))`, `rows = ceil(n/cols)`);
//! each cell is a `color` source lasting the whole mixdown with the participant's name drawn on
//! it, and the participant's video, scaled to fit (aspect kept, padded) and moved to its offset,
//! laid over it with `eof_action=pass`: before they join, after they leave and without video, the
//! cell shows their name. The audio of each track is resampled to 48 kHz, padded to start at 0,
//! delayed by its offset, mixed without normalisation (`amix normalize=0`: a participant's level
//! does not depend on how many others there are), and brought to -16 LUFS by `loudnorm` in two
//! passes: the first measures the mix (`print_format=json`), the second applies the measurement
//! linearly (`linear=true`), which keeps the mix's dynamics instead of loudnorm's one-pass
//! dynamic compression.

use std::path::Path;

use crate::media::EncodeSettings;

/// The canvas of the mixdown's picture.
pub const WIDTH: u32 = 1280;
pub const HEIGHT: u32 = 720;
pub const FPS: u32 = 30;
/// Loudness target: integrated, true peak, range (EBU R128 for streaming: -16 LUFS).
pub const TARGET_I: f64 = -16.0;
pub const TARGET_TP: f64 = -1.5;
pub const TARGET_LRA: f64 = 11.0;
/// Below this measured loudness the mix is silence, which loudnorm cannot bring to a level.
pub const SILENCE_LUFS: f64 = -70.0;
/// The placeholder's background.
pub const PLACEHOLDER_COLOR: &str = "0x2b2f3a";

/// How the canvas is divided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grid {
    pub cols: u32,
    pub rows: u32,
    /// Cell size, even (H.264 in 4:2:0 needs even sizes).
    pub cell_width: u32,
    pub cell_height: u32,
}

impl Grid {
    /// Top-left corner of cell `index` (row by row).
    pub fn position(&self, index: u32) -> (u32, u32) {
        (
            (index % self.cols) * self.cell_width,
            (index / self.cols) * self.cell_height,
        )
    }

    pub fn cells(&self) -> u32 {
        self.cols * self.rows
    }
}

/// The grid of `n` tiles (at least 1).
pub fn grid(n: usize) -> Grid {
    let n = u32::try_from(n.max(1)).unwrap_or(u32::MAX);
    let mut cols = 1;
    while cols * cols < n {
        cols += 1;
    }
    let rows = n.div_ceil(cols);
    let even = |v: u32| v / 2 * 2;
    Grid {
        cols,
        rows,
        cell_width: even(WIDTH / cols),
        cell_height: even(HEIGHT / rows),
    }
}

/// One participant in the mixdown.
#[derive(Debug, Clone, PartialEq)]
pub struct Tile<'a> {
    /// File holding the name drawn on the placeholder (`drawtext textfile=`: no escaping of the
    /// name itself, and no `%{…}` expansion).
    pub label_file: &'a Path,
    /// Characters of the name, to size the text.
    pub label_chars: usize,
    /// When the track starts in the mixdown, in seconds.
    pub offset: f64,
    pub video: bool,
    pub audio: bool,
}

/// What the loudnorm filter does in a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Loudness {
    /// First pass: measure and print JSON.
    Measure,
    /// Second pass: apply the first pass's measurement linearly.
    Apply(Measured),
    /// The mix is silent: no normalisation.
    Skip,
}

/// loudnorm's measurement of the mix (its first pass's `input_*` and `target_offset`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measured {
    pub i: f64,
    pub tp: f64,
    pub lra: f64,
    pub thresh: f64,
    pub offset: f64,
}

/// A value for a filter option: escaped for the option (`\`, `'`, `:`) and then for the graph
/// (`\`, `'`, `[`, `]`, `,`, `;`), as ffmpeg's filtergraph syntax reads it.
pub fn escape_value(value: &str) -> String {
    let mut option = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '\\' | '\'' | ':') {
            option.push('\\');
        }
        option.push(c);
    }
    let mut graph = String::with_capacity(option.len());
    for c in option.chars() {
        if matches!(c, '\\' | '\'' | '[' | ']' | ',' | ';') {
            graph.push('\\');
        }
        graph.push(c);
    }
    graph
}

/// Seconds as ffmpeg reads them, to the millisecond.
fn secs(value: f64) -> String {
    format!("{:.3}", value.max(0.0))
}

/// Font size of a name of `chars` characters in a cell: an eighth of its height, smaller when
/// the name would not fit its width (DejaVu Sans averages about 0.6 em a character).
pub fn font_size(grid: &Grid, chars: usize) -> u32 {
    let by_height = grid.cell_height / 8;
    let chars = u32::try_from(chars.max(1)).unwrap_or(u32::MAX);
    let by_width = (grid.cell_width * 9 / 10).saturating_mul(10) / chars.saturating_mul(6).max(1);
    by_height.min(by_width).clamp(8, 72)
}

/// The picture's part of the filter graph, ending in `[vout]`: `duration` seconds of the grid.
pub fn video_graph(tiles: &[Tile<'_>], duration: f64, font: &Path) -> String {
    let grid = grid(tiles.len());
    let (w, h) = (grid.cell_width, grid.cell_height);
    let d = secs(duration);
    let font = escape_value(&font.to_string_lossy());
    let mut graph = Vec::new();
    for (i, tile) in tiles.iter().enumerate() {
        let size = font_size(&grid, tile.label_chars);
        let placeholder = format!(
            "color=c={PLACEHOLDER_COLOR}:s={w}x{h}:r={FPS}:d={d},\
             drawtext=fontfile={font}:textfile={}:expansion=none:fontcolor=white:fontsize={size}:\
             x=(w-text_w)/2:y=(h-text_h)/2",
            escape_value(&tile.label_file.to_string_lossy())
        );
        if tile.video {
            graph.push(format!("{placeholder}[bg{i}]"));
            graph.push(format!(
                "[{i}:v:0]scale={w}:{h}:force_original_aspect_ratio=decrease,\
                 pad={w}:{h}:(ow-iw)/2:(oh-ih)/2:color=black,setsar=1,\
                 setpts=PTS-STARTPTS+{}/TB[v{i}]",
                secs(tile.offset)
            ));
            graph.push(format!(
                "[bg{i}][v{i}]overlay=x=0:y=0:eof_action=pass:format=auto[c{i}]"
            ));
        } else {
            graph.push(format!("{placeholder}[c{i}]"));
        }
    }
    let used = tiles.len() as u32;
    for i in used..grid.cells().max(used) {
        graph.push(format!("color=c=black:s={w}x{h}:r={FPS}:d={d}[c{i}]"));
    }
    let cells = grid.cells().max(used);
    let finish = format!(
        "pad={WIDTH}:{HEIGHT}:(ow-iw)/2:(oh-ih)/2:color=black,setsar=1,format=yuv420p[vout]"
    );
    if cells == 1 {
        graph.push(format!("[c0]{finish}"));
    } else {
        let inputs: String = (0..cells).map(|i| format!("[c{i}]")).collect();
        let layout: Vec<String> = (0..cells)
            .map(|i| {
                let (x, y) = grid.position(i);
                format!("{x}_{y}")
            })
            .collect();
        graph.push(format!(
            "{inputs}xstack=inputs={cells}:layout={}:fill=black,{finish}",
            layout.join("|")
        ));
    }
    graph.join(";")
}

/// The sound's part of the filter graph, ending in `[aout]`; `None` when no track has audio.
pub fn audio_graph(tiles: &[Tile<'_>], loudness: Loudness) -> Option<String> {
    let mut graph = Vec::new();
    let mut mixed = String::new();
    for (i, tile) in tiles.iter().enumerate().filter(|(_, t)| t.audio) {
        let delay = (tile.offset * 1000.0).round().max(0.0) as u64;
        graph.push(format!(
            "[{i}:a:0]aresample=48000:async=1:first_pts=0,\
             aformat=sample_fmts=fltp:sample_rates=48000:channel_layouts=stereo,\
             adelay=delays={delay}:all=1[a{i}]"
        ));
        mixed.push_str(&format!("[a{i}]"));
    }
    if graph.is_empty() {
        return None;
    }
    let count = graph.len();
    let target = format!("I={TARGET_I}:TP={TARGET_TP}:LRA={TARGET_LRA}");
    let level = match loudness {
        Loudness::Measure => format!(",loudnorm={target}:print_format=json"),
        Loudness::Apply(m) => format!(
            ",loudnorm={target}:measured_I={:.2}:measured_TP={:.2}:measured_LRA={:.2}:\
             measured_thresh={:.2}:offset={:.2}:linear=true:print_format=summary",
            m.i, m.tp, m.lra, m.thresh, m.offset
        ),
        Loudness::Skip => String::new(),
    };
    graph.push(format!(
        "{mixed}amix=inputs={count}:duration=longest:normalize=0:dropout_transition=0{level},\
         aresample=48000,aformat=sample_rates=48000:channel_layouts=stereo[aout]"
    ));
    Some(graph.join(";"))
}

/// Options in front of each input URL: ffmpeg's HTTP client reconnects when storage drops the
/// connection, so one reset does not cost the whole mixdown.
const INPUT_OPTIONS: [&str; 8] = [
    "-reconnect",
    "1",
    "-reconnect_on_network_error",
    "1",
    "-reconnect_delay_max",
    "10",
    "-rw_timeout",
    "60000000",
];

fn head_args(inputs: &[String], loglevel: &str) -> Vec<String> {
    let mut args: Vec<String> = [
        "-hide_banner",
        "-nostdin",
        "-nostats",
        "-loglevel",
        loglevel,
    ]
    .map(String::from)
    .to_vec();
    args.extend(["-progress".into(), "pipe:1".into()]);
    for input in inputs {
        // Local files (the benchmark's "ffmpeg alone") take no HTTP options.
        if is_url(input) {
            args.extend(INPUT_OPTIONS.map(String::from));
        }
        args.extend(["-i".into(), input.clone()]);
    }
    args
}

/// Whether `input` is read over the network (the options above apply only there).
fn is_url(input: &str) -> bool {
    input.starts_with("http://") || input.starts_with("https://")
}

/// The first pass: the sound only, measured by loudnorm, nothing written (`-vn -f null -`).
/// loudnorm prints its JSON on stderr at the end, at the `info` level.
pub fn measure_args(inputs: &[String], audio_graph: &str) -> Vec<String> {
    let mut args = head_args(inputs, "level+info");
    args.extend(
        [
            "-filter_complex",
            audio_graph,
            "-map",
            "[aout]",
            "-vn",
            "-f",
            "null",
            "-",
        ]
        .map(String::from),
    );
    args
}

/// What the second pass writes.
#[derive(Debug, Clone, PartialEq)]
pub struct Encode<'a> {
    pub video: bool,
    pub audio: bool,
    pub settings: &'a EncodeSettings,
    pub duration: f64,
    pub output: &'a Path,
}

/// The second pass: the whole graph, encoded to H.264 and AAC in MP4 (index at the front, so a
/// seekable file in the scratch dir), cut at the mixdown's duration.
pub fn encode_args(inputs: &[String], graph: &str, encode: &Encode<'_>) -> Vec<String> {
    let mut args = head_args(inputs, "level+warning");
    args.extend(["-filter_complex".into(), graph.to_owned()]);
    if encode.video {
        let crf = encode.settings.video_crf.to_string();
        args.extend(
            [
                "-map",
                "[vout]",
                "-c:v",
                "libx264",
                "-preset",
                &encode.settings.video_preset,
                "-crf",
                &crf,
                "-pix_fmt",
                "yuv420p",
                "-r",
                "30",
            ]
            .map(String::from),
        );
    }
    if encode.audio {
        args.extend(
            [
                "-map",
                "[aout]",
                "-c:a",
                "aac",
                "-b:a",
                &encode.settings.audio_bitrate,
                "-ar",
                "48000",
            ]
            .map(String::from),
        );
    }
    if !encode.video {
        args.push("-vn".into());
    }
    args.extend(
        [
            "-t",
            &secs(encode.duration),
            "-movflags",
            "+faststart",
            "-f",
            "mp4",
            "-y",
        ]
        .map(String::from),
    );
    args.push(encode.output.to_string_lossy().into_owned());
    args
}

/// loudnorm's first-pass JSON, the last `{…}` block of ffmpeg's stderr.
pub fn parse_measurement(stderr: &str) -> Result<Measured, String> {
    let end = stderr
        .rfind('}')
        .ok_or("ffmpeg printed no loudness measurement")?;
    let start = stderr[..end]
        .rfind('{')
        .ok_or("ffmpeg printed no loudness measurement")?;
    let json: serde_json::Value = serde_json::from_str(&stderr[start..=end])
        .map_err(|err| format!("the loudness measurement does not parse: {err}"))?;
    let field = |name: &str| -> Result<f64, String> {
        let text = json[name]
            .as_str()
            .ok_or_else(|| format!("the loudness measurement has no {name}"))?;
        match text.trim() {
            "-inf" => Ok(f64::NEG_INFINITY),
            "inf" => Ok(f64::INFINITY),
            other => other
                .parse()
                .map_err(|_| format!("the loudness measurement's {name} is {other:?}")),
        }
    };
    Ok(Measured {
        i: field("input_i")?,
        tp: field("input_tp")?,
        lra: field("input_lra")?,
        thresh: field("input_thresh")?,
        offset: field("target_offset")?,
    })
}

impl Measured {
    /// How the second pass uses it: silence (or a measurement that is not a number) is left
    /// as it is.
    pub fn loudness(self) -> Loudness {
        let finite = [self.i, self.tp, self.lra, self.thresh, self.offset]
            .iter()
            .all(|v| v.is_finite());
        if finite && self.i > SILENCE_LUFS {
            Loudness::Apply(self)
        } else {
            Loudness::Skip
        }
    }
}

/// The output time of one `-progress` line (`out_time_us=…`), in seconds.
pub fn progress_seconds(line: &str) -> Option<f64> {
    let value = line.trim().strip_prefix("out_time_us=")?;
    let micros: i64 = value.parse().ok()?;
    (micros >= 0).then(|| micros as f64 / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn grids_grow_square_with_even_cells() {
        // (tracks, cols, rows)
        for (n, cols, rows) in [
            (1, 1, 1),
            (2, 2, 1),
            (3, 2, 2),
            (4, 2, 2),
            (5, 3, 2),
            (6, 3, 2),
            (7, 3, 3),
            (9, 3, 3),
            (10, 4, 3),
            (16, 4, 4),
            (17, 5, 4),
            (25, 5, 5),
            (26, 6, 5),
            (32, 6, 6),
        ] {
            let g = grid(n);
            assert_eq!((g.cols, g.rows), (cols, rows), "{n} tracks");
            assert!(g.cells() as usize >= n, "{n}");
            assert_eq!(g.cell_width % 2, 0, "{n}: {g:?}");
            assert_eq!(g.cell_height % 2, 0, "{n}: {g:?}");
            assert!(g.cell_width * g.cols <= WIDTH && g.cell_height * g.rows <= HEIGHT);
            assert!(WIDTH - g.cell_width * g.cols < 2 * g.cols, "{n}: {g:?}");
        }
        assert_eq!(grid(1).cell_width, 1280);
        assert_eq!(grid(2).position(1), (640, 0));
        assert_eq!(grid(4).position(3), (640, 360));
        assert_eq!(grid(32).cell_width, 212);
        assert_eq!(grid(32).cell_height, 120);
        assert_eq!(grid(0), grid(1));
    }

    #[test]
    fn values_are_escaped_for_the_option_and_the_graph() {
        assert_eq!(escape_value("/tmp/a.txt"), "/tmp/a.txt");
        assert_eq!(escape_value("C:/x"), "C\\\\:/x");
        assert_eq!(escape_value("a'b"), "a\\\\\\'b");
        assert_eq!(escape_value("a[b],c;d"), "a\\[b\\]\\,c\\;d");
    }

    fn tiles(paths: &[PathBuf], spec: &[(f64, bool, bool)]) -> Vec<Tile<'static>> {
        paths
            .iter()
            .zip(spec)
            .map(|(path, &(offset, video, audio))| Tile {
                label_file: Box::leak(path.clone().into_boxed_path()),
                label_chars: 5,
                offset,
                video,
                audio,
            })
            .collect()
    }

    fn labels(n: usize) -> Vec<PathBuf> {
        (0..n)
            .map(|i| PathBuf::from(format!("/s/label-{i}.txt")))
            .collect()
    }

    #[test]
    fn two_tiles_side_by_side_each_over_its_placeholder_at_its_offset() {
        let font = Path::new("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf");
        let t = tiles(&labels(2), &[(0.0, true, true), (3.0, true, true)]);
        let graph = video_graph(&t, 12.5, font);
        for part in [
            "color=c=0x2b2f3a:s=640x720:r=30:d=12.500,drawtext=fontfile=/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf:textfile=/s/label-0.txt:expansion=none",
            "[0:v:0]scale=640:720:force_original_aspect_ratio=decrease,pad=640:720:(ow-iw)/2:(oh-ih)/2:color=black,setsar=1,setpts=PTS-STARTPTS+0.000/TB[v0]",
            "setpts=PTS-STARTPTS+3.000/TB[v1]",
            "[bg1][v1]overlay=x=0:y=0:eof_action=pass:format=auto[c1]",
            "[c0][c1]xstack=inputs=2:layout=0_0|640_0:fill=black,pad=1280:720",
            "format=yuv420p[vout]",
        ] {
            assert!(graph.contains(part), "{part}\nnot in\n{graph}");
        }
        assert_eq!(graph.matches("[vout]").count(), 1);
    }

    #[test]
    fn one_tile_fills_the_frame_and_unused_cells_are_black() {
        let font = Path::new("/f.ttf");
        let one = video_graph(&tiles(&labels(1), &[(0.0, true, true)]), 5.0, font);
        assert!(one.contains("s=1280x720"), "{one}");
        assert!(!one.contains("xstack"), "{one}");
        assert!(one.contains("[c0]pad=1280:720"), "{one}");

        let three = video_graph(
            &tiles(
                &labels(3),
                &[(0.0, true, true), (1.0, false, true), (0.0, true, false)],
            ),
            5.0,
            font,
        );
        // A track without video is its placeholder only.
        assert!(!three.contains("[1:v:0]"), "{three}");
        assert!(three.contains("textfile=/s/label-1.txt"), "{three}");
        assert!(
            three.contains("color=c=black:s=640x360:r=30:d=5.000[c3]"),
            "{three}"
        );
        assert!(
            three.contains("xstack=inputs=4:layout=0_0|640_0|0_360|640_360"),
            "{three}"
        );

        let many = video_graph(&tiles(&labels(32), &[(0.0, true, true); 32]), 5.0, font);
        assert!(many.contains("xstack=inputs=36:"), "{}", &many[..200]);
        assert!(many.contains("[31:v:0]"));
        assert!(many.contains("[c35]"));
    }

    #[test]
    fn audio_is_delayed_by_each_offset_mixed_and_normalised() {
        let t = tiles(
            &labels(3),
            &[(0.0, true, true), (3.0, true, true), (1.0, true, false)],
        );
        let measure = audio_graph(&t, Loudness::Measure).expect("audio");
        for part in [
            "[0:a:0]aresample=48000:async=1:first_pts=0,",
            "adelay=delays=0:all=1[a0]",
            "adelay=delays=3000:all=1[a1]",
            "[a0][a1]amix=inputs=2:duration=longest:normalize=0:dropout_transition=0,loudnorm=I=-16:TP=-1.5:LRA=11:print_format=json,aresample=48000,aformat=sample_rates=48000:channel_layouts=stereo[aout]",
        ] {
            assert!(measure.contains(part), "{part}\nnot in\n{measure}");
        }
        assert!(!measure.contains("[2:a:0]"), "{measure}");

        let measured = Measured {
            i: -23.456,
            tp: -4.0,
            lra: 5.5,
            thresh: -33.9,
            offset: 0.25,
        };
        let apply = audio_graph(&t, Loudness::Apply(measured)).expect("audio");
        assert!(
            apply.contains("loudnorm=I=-16:TP=-1.5:LRA=11:measured_I=-23.46:measured_TP=-4.00:measured_LRA=5.50:measured_thresh=-33.90:offset=0.25:linear=true"),
            "{apply}"
        );
        let skip = audio_graph(&t, Loudness::Skip).expect("audio");
        assert!(!skip.contains("loudnorm"), "{skip}");
        assert_eq!(
            audio_graph(&tiles(&labels(1), &[(0.0, true, false)]), Loudness::Measure),
            None
        );
    }

    #[test]
    fn arguments_read_urls_with_reconnects_and_local_files_without() {
        let settings = EncodeSettings {
            video_preset: "veryfast".into(),
            video_crf: 23,
            audio_bitrate: "128k".into(),
        };
        let urls = vec![
            "http://s3/a.mp4?X-Amz-Signature=1".to_owned(),
            "http://s3/b.mp4".into(),
        ];
        let encode = Encode {
            video: true,
            audio: true,
            settings: &settings,
            duration: 7.25,
            output: Path::new("/s/mixdown.mp4"),
        };
        let args = encode_args(&urls, "G", &encode);
        let line = args.join(" ");
        assert_eq!(args.iter().filter(|a| *a == "-reconnect").count(), 2);
        for part in [
            "-progress pipe:1",
            "-reconnect 1 -reconnect_on_network_error 1",
            "-i http://s3/a.mp4?X-Amz-Signature=1",
            "-filter_complex G -map [vout] -c:v libx264 -preset veryfast -crf 23",
            "-map [aout] -c:a aac -b:a 128k",
            "-t 7.250 -movflags +faststart -f mp4 -y /s/mixdown.mp4",
        ] {
            assert!(line.contains(part), "{part}\nnot in\n{line}");
        }
        let audio_only = encode_args(
            &urls,
            "G",
            &Encode {
                video: false,
                ..encode.clone()
            },
        );
        assert!(audio_only.contains(&"-vn".to_owned()));
        assert!(!audio_only.contains(&"[vout]".to_owned()));

        let local = vec!["/data/a.mp4".to_owned(), "/data/b.mp4".to_owned()];
        let args = measure_args(&local, "A");
        assert!(!args.contains(&"-reconnect".to_owned()), "{args:?}");
        assert_eq!(
            args.join(" "),
            "-hide_banner -nostdin -nostats -loglevel level+info -progress pipe:1 -i /data/a.mp4 -i /data/b.mp4 -filter_complex A -map [aout] -vn -f null -"
        );
    }

    #[test]
    fn the_measurement_is_read_from_the_end_of_the_log() {
        let stderr = r#"[info] Stream mapping: {whatever}
[Parsed_loudnorm_7 @ 0x5581] [info]
{
	"input_i" : "-27.61",
	"input_tp" : "-8.49",
	"input_lra" : "2.80",
	"input_thresh" : "-37.71",
	"output_i" : "-16.02",
	"output_tp" : "-1.50",
	"output_lra" : "1.90",
	"output_thresh" : "-26.08",
	"normalization_type" : "dynamic",
	"target_offset" : "0.02"
}
"#;
        let m = parse_measurement(stderr).expect("parses");
        assert_eq!(
            m,
            Measured {
                i: -27.61,
                tp: -8.49,
                lra: 2.8,
                thresh: -37.71,
                offset: 0.02
            }
        );
        assert_eq!(m.loudness(), Loudness::Apply(m));
        let silent = parse_measurement(
            r#"{"input_i":"-inf","input_tp":"-inf","input_lra":"0.00","input_thresh":"-70.00","target_offset":"inf"}"#,
        )
        .expect("parses");
        assert_eq!(silent.loudness(), Loudness::Skip);
        assert!(parse_measurement("no json here").is_err());
        assert!(parse_measurement(r#"{"input_i":"x"}"#).is_err());
    }

    #[test]
    fn progress_lines_give_the_output_time() {
        assert_eq!(progress_seconds("out_time_us=1500000"), Some(1.5));
        assert_eq!(progress_seconds("out_time_us=N/A"), None);
        assert_eq!(progress_seconds("out_time_us=-5"), None);
        assert_eq!(progress_seconds("frame=10"), None);
    }

    #[test]
    fn names_are_sized_to_their_cell() {
        let g = grid(1);
        assert_eq!(font_size(&g, 5), 72);
        let g = grid(32);
        assert_eq!(font_size(&g, 5), 15);
        assert!(font_size(&g, 64) < 15);
        assert!(font_size(&g, 64) >= 8);
    }
}
