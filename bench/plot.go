package bench

import (
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"io"
	"math"

	"golang.org/x/image/font"
	"golang.org/x/image/font/basicfont"
	"golang.org/x/image/math/fixed"
)

// WritePNG draws latency (p50 and p99, ms) against throughput (requests
// per second), one point per step in sweep order: the curve a researcher
// reads a server's capacity from.
func (r *Report) WritePNG(w io.Writer) error {
	const width, height = 800, 520
	const left, right, top, bottom = 70, 20, 40, 50
	img := image.NewRGBA(image.Rect(0, 0, width, height))
	draw.Draw(img, img.Bounds(), image.White, image.Point{}, draw.Src)
	var maxX, maxY float64
	for _, s := range r.Steps {
		maxX = math.Max(maxX, s.ThroughputRPS)
		maxY = math.Max(maxY, s.P99Ms)
	}
	if maxX == 0 || maxY == 0 {
		return fmt.Errorf("bench: nothing to plot (no successful requests)")
	}
	maxX, maxY = niceCeil(maxX), niceCeil(maxY)
	px := func(x float64) int { return left + int(x/maxX*float64(width-left-right)) }
	py := func(y float64) int { return height - bottom - int(y/maxY*float64(height-top-bottom)) }

	grey, black := color.RGBA{220, 220, 220, 255}, color.RGBA{0, 0, 0, 255}
	for i := 0; i <= 5; i++ {
		x, y := maxX*float64(i)/5, maxY*float64(i)/5
		line(img, px(x), py(0), px(x), py(maxY), grey)
		line(img, px(0), py(y), px(maxX), py(y), grey)
		text(img, px(x)-12, height-bottom+16, trim(x), black)
		text(img, 8, py(y)+4, trim(y), black)
	}
	line(img, px(0), py(0), px(maxX), py(0), black)
	line(img, px(0), py(0), px(0), py(maxY), black)
	text(img, width/2-60, height-12, "throughput (requests/s)", black)
	text(img, 8, top-8, "latency (ms)", black)
	text(img, left+140, 18, fmt.Sprintf("%s on %s", r.Model, r.Target), black)

	series := []struct {
		name string
		c    color.RGBA
		y    func(Step) float64
	}{
		{"p50", color.RGBA{31, 119, 180, 255}, func(s Step) float64 { return s.P50Ms }},
		{"p99", color.RGBA{214, 39, 40, 255}, func(s Step) float64 { return s.P99Ms }},
	}
	for k, sr := range series {
		var lx, ly int
		for i, s := range r.Steps {
			if s.ThroughputRPS == 0 {
				continue
			}
			x, y := px(s.ThroughputRPS), py(sr.y(s))
			if i > 0 && lx != 0 {
				line(img, lx, ly, x, y, sr.c)
			}
			dot(img, x, y, sr.c)
			lx, ly = x, y
		}
		text(img, width-right-120, top+16+16*k, "-- "+sr.name+" latency", sr.c)
	}
	return png.Encode(w, img)
}

// niceCeil rounds v up to 1, 2 or 5 times a power of ten.
func niceCeil(v float64) float64 {
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if v <= m*p {
			return m * p
		}
	}
	return 10 * p
}

func trim(v float64) string {
	if v == math.Trunc(v) {
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%.1f", v)
}

func text(img *image.RGBA, x, y int, s string, c color.Color) {
	d := &font.Drawer{Dst: img, Src: image.NewUniform(c), Face: basicfont.Face7x13, Dot: fixed.P(x, y)}
	d.DrawString(s)
}

func dot(img *image.RGBA, x, y int, c color.Color) {
	for dx := -3; dx <= 3; dx++ {
		for dy := -3; dy <= 3; dy++ {
			if dx*dx+dy*dy <= 9 {
				img.Set(x+dx, y+dy, c)
			}
		}
	}
}

// line draws a segment with Bresenham's algorithm.
func line(img *image.RGBA, x0, y0, x1, y1 int, c color.Color) {
	dx, dy := abs(x1-x0), -abs(y1-y0)
	sx, sy := 1, 1
	if x0 > x1 {
		sx = -1
	}
	if y0 > y1 {
		sy = -1
	}
	e := dx + dy
	for {
		img.Set(x0, y0, c)
		if x0 == x1 && y0 == y1 {
			return
		}
		e2 := 2 * e
		if e2 >= dy {
			e += dy
			x0 += sx
		}
		if e2 <= dx {
			e += dx
			y0 += sy
		}
	}
}

func abs(v int) int {
	if v < 0 {
		return -v
	}
	return v
}
