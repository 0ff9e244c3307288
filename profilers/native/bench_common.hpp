// Shared pieces of the native timers: the measurement protocol, the statistics and the JSON output.
//
// The rules are those of the Python timing core (profilers/timing.py), so that a native figure and
// a Python figure of the same module differ only by what runs around the kernels: warm-up until
// both a count and a duration are reached, then at least N iterations and at least T seconds
// (max_iters stops very fast ops; max_s keeps a pathological case finite and is reported), one
// clock reading per iteration, every raw sample kept, a noisy result (IQR/median above the
// threshold) re-measured, and the median as the statistic with p10/p90/IQR beside it.
// Percentiles interpolate linearly between order statistics, as numpy.percentile does by default,
// so a reader can recompute every statistic from samples_ms.
#pragma once

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace lana {

// A problem the user can fix (bad flag, missing file); reported as one `error: ...` line, exit 2.
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// How long to warm up and how long to measure; fields and defaults mirror profilers.timing.Protocol.
struct Protocol {
  double warmup_s = 0.05;         // warm up for at least this long ...
  long warmup_iters = 5;          // ... and at least this many iterations
  long min_iters = 20;            // measure at least this many iterations ...
  double min_time_s = 0.2;        // ... and at least this long
  long max_iters = 10000;         // stop here even if min_time_s is not reached (very fast ops)
  double noise_threshold = 0.10;  // IQR / median above this counts as noisy
  long retries = 2;               // re-measurements of a noisy result before it is flagged
  double max_s = 60.0;            // hard cap on one attempt's seconds, so a very slow module ends
};

// The raw samples of the kept attempt and how the measurement went.
struct Measurement {
  std::vector<double> samples_ms;
  long warmup_iters = 0;   // warm-up iterations actually run
  double warmup_s = 0.0;   // seconds of warm-up actually run
  double timed_s = 0.0;    // seconds inside timed attempts, all attempts
  long attempts = 0;       // 1 + re-measurements
  bool noisy = false;      // still above the noise threshold after every re-measurement
  std::string stopped_by;  // why the kept attempt ended: "minimums", "max_iters" or "max_s"
};

using Clock = std::chrono::steady_clock;

inline double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Linear interpolation between order statistics (numpy's default); `sorted` must be sorted.
inline double percentile(const std::vector<double>& sorted, double q) {
  if (sorted.empty()) return std::nan("");
  const double pos = q / 100.0 * static_cast<double>(sorted.size() - 1);
  const auto lo = static_cast<size_t>(std::floor(pos));
  const auto hi = static_cast<size_t>(std::ceil(pos));
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - static_cast<double>(lo));
}

// IQR / median of unsorted samples; infinity when the median is not positive.
inline double relative_iqr(std::vector<double> samples) {
  std::sort(samples.begin(), samples.end());
  const double median = percentile(samples, 50.0);
  if (!(median > 0.0)) return INFINITY;
  return (percentile(samples, 75.0) - percentile(samples, 25.0)) / median;
}

// Runs `iteration` (which returns one sample in milliseconds) under the protocol: warm up once,
// then measure; re-measure while noisy, up to `retries` times, keeping the least noisy attempt.
inline Measurement measure(const Protocol& protocol, const std::function<double()>& iteration) {
  Measurement m;
  const auto warm_start = Clock::now();
  while (m.warmup_iters < protocol.warmup_iters || seconds_since(warm_start) < protocol.warmup_s) {
    iteration();
    ++m.warmup_iters;
  }
  m.warmup_s = seconds_since(warm_start);

  double best_noise = INFINITY;
  for (long attempt = 0; attempt <= protocol.retries; ++attempt) {
    std::vector<double> samples;
    samples.reserve(static_cast<size_t>(std::min<long>(std::max<long>(protocol.min_iters, 1024),
                                                       protocol.max_iters)));
    std::string stopped_by;
    const auto start = Clock::now();
    for (;;) {
      samples.push_back(iteration());
      const long n = static_cast<long>(samples.size());
      const double elapsed = seconds_since(start);
      if (n >= protocol.min_iters && elapsed >= protocol.min_time_s) {
        stopped_by = "minimums";
        break;
      }
      if (n >= protocol.max_iters) {
        stopped_by = "max_iters";
        break;
      }
      if (elapsed >= protocol.max_s) {
        stopped_by = "max_s";
        break;
      }
    }
    m.timed_s += seconds_since(start);
    m.attempts = attempt + 1;
    const double noise = relative_iqr(samples);
    if (m.samples_ms.empty() || noise < best_noise) {
      best_noise = noise;
      m.samples_ms = std::move(samples);
      m.stopped_by = stopped_by;
    }
    if (best_noise <= protocol.noise_threshold) break;
  }
  m.noisy = best_noise > protocol.noise_threshold;
  return m;
}

// Minimal JSON object writer: keys keep insertion order, doubles print in shortest round-trip form.
class JsonObject {
 public:
  JsonObject& str(const std::string& key, const std::string& value) {
    return raw(key, quote(value));
  }
  JsonObject& num(const std::string& key, double value) { return raw(key, number(value)); }
  JsonObject& integer(const std::string& key, long long value) {
    return raw(key, std::to_string(value));
  }
  JsonObject& boolean(const std::string& key, bool value) {
    return raw(key, value ? "true" : "false");
  }
  JsonObject& nums(const std::string& key, const std::vector<double>& values) {
    std::string out = "[";
    for (size_t i = 0; i < values.size(); ++i) {
      if (i) out += ", ";
      out += number(values[i]);
    }
    return raw(key, out + "]");
  }
  JsonObject& ints(const std::string& key, const std::vector<long long>& values) {
    std::string out = "[";
    for (size_t i = 0; i < values.size(); ++i) {
      if (i) out += ", ";
      out += std::to_string(values[i]);
    }
    return raw(key, out + "]");
  }
  JsonObject& object(const std::string& key, const JsonObject& value) {
    return raw(key, value.dump());
  }
  JsonObject& raw(const std::string& key, const std::string& json) {
    fields_.emplace_back(key, json);
    return *this;
  }
  std::string dump() const {
    std::string out = "{";
    for (size_t i = 0; i < fields_.size(); ++i) {
      if (i) out += ", ";
      out += quote(fields_[i].first) + ": " + fields_[i].second;
    }
    return out + "}";
  }

  static std::string quote(const std::string& s) {
    std::string out = "\"";
    for (const unsigned char c : s) {
      switch (c) {
        case '"': out += "\\\""; break;
        case '\\': out += "\\\\"; break;
        case '\n': out += "\\n"; break;
        case '\r': out += "\\r"; break;
        case '\t': out += "\\t"; break;
        default:
          if (c < 0x20) {
            char buf[8];
            std::snprintf(buf, sizeof(buf), "\\u%04x", c);
            out += buf;
          } else {
            out += static_cast<char>(c);
          }
      }
    }
    return out + "\"";
  }

  static std::string number(double value) {
    if (!std::isfinite(value)) return "null";
    char buf[64];
    const auto res = std::to_chars(buf, buf + sizeof(buf), value);
    return std::string(buf, res.ptr);
  }

 private:
  std::vector<std::pair<std::string, std::string>> fields_;
};

// Adds the statistics of `m` (median, p10, p90, iqr, n, samples_ms, ...) to `out`.
inline void add_statistics(JsonObject& out, const Measurement& m, const Protocol& protocol) {
  std::vector<double> sorted = m.samples_ms;
  std::sort(sorted.begin(), sorted.end());
  double sum = 0.0;
  for (const double v : sorted) sum += v;
  const double median = percentile(sorted, 50.0);
  const double iqr = percentile(sorted, 75.0) - percentile(sorted, 25.0);
  out.num("median", median)
      .num("p10", percentile(sorted, 10.0))
      .num("p90", percentile(sorted, 90.0))
      .num("iqr", iqr)
      .num("p25", percentile(sorted, 25.0))
      .num("p75", percentile(sorted, 75.0))
      .num("min", sorted.empty() ? std::nan("") : sorted.front())
      .num("max", sorted.empty() ? std::nan("") : sorted.back())
      .num("mean", sorted.empty() ? std::nan("") : sum / static_cast<double>(sorted.size()))
      .num("iqr_over_median", median > 0.0 ? iqr / median : std::nan(""))
      .integer("n", static_cast<long long>(m.samples_ms.size()))
      .str("unit", "ms");
  JsonObject proto;
  proto.num("warmup_s", protocol.warmup_s)
      .integer("warmup_iters", protocol.warmup_iters)
      .integer("min_iters", protocol.min_iters)
      .num("min_time_s", protocol.min_time_s)
      .integer("max_iters", protocol.max_iters)
      .num("noise_threshold", protocol.noise_threshold)
      .integer("retries", protocol.retries)
      .num("max_s", protocol.max_s);
  out.boolean("noisy", m.noisy)
      .integer("attempts", m.attempts)
      .object("protocol", proto)
      .integer("warmup_iters_run", m.warmup_iters)
      .num("warmup_s_run", m.warmup_s)
      .num("timed_s", m.timed_s)
      .str("stopped_by", m.stopped_by);
}

// --flag value parsing: every flag takes exactly one value; repeated flags accumulate.
class Args {
 public:
  Args(int argc, char** argv, const std::string& usage) : usage_(usage) {
    for (int i = 1; i < argc; ++i) {
      std::string flag = argv[i];
      if (flag == "-h" || flag == "--help") {
        help_ = true;
        continue;
      }
      if (flag.rfind("--", 0) != 0) throw UsageError("unexpected argument '" + flag + "'; " + usage_);
      std::string value;
      const auto eq = flag.find('=');
      if (eq != std::string::npos) {
        value = flag.substr(eq + 1);
        flag = flag.substr(0, eq);
      } else {
        if (i + 1 >= argc) throw UsageError(flag + " needs a value; " + usage_);
        value = argv[++i];
      }
      values_[flag.substr(2)].push_back(value);
    }
  }

  bool help() const { return help_; }

  bool has(const std::string& name) const { return values_.count(name) > 0; }

  std::string get(const std::string& name, const std::string& fallback) const {
    const auto it = values_.find(name);
    return it == values_.end() ? fallback : it->second.back();
  }

  std::vector<std::string> all(const std::string& name) const {
    const auto it = values_.find(name);
    return it == values_.end() ? std::vector<std::string>{} : it->second;
  }

  long get_long(const std::string& name, long fallback) const {
    if (!has(name)) return fallback;
    const std::string v = get(name, "");
    char* end = nullptr;
    const long parsed = std::strtol(v.c_str(), &end, 10);
    if (v.empty() || *end != '\0') throw UsageError("--" + name + " expects an integer, got '" + v + "'");
    return parsed;
  }

  double get_double(const std::string& name, double fallback) const {
    if (!has(name)) return fallback;
    const std::string v = get(name, "");
    char* end = nullptr;
    const double parsed = std::strtod(v.c_str(), &end);
    if (v.empty() || *end != '\0') throw UsageError("--" + name + " expects a number, got '" + v + "'");
    return parsed;
  }

  // Rejects flags the program does not know, so a typo is not silently ignored.
  void only(const std::vector<std::string>& known) const {
    for (const auto& kv : values_) {
      if (std::find(known.begin(), known.end(), kv.first) == known.end()) {
        throw UsageError("unknown flag --" + kv.first + "; " + usage_);
      }
    }
  }

  Protocol protocol() const {
    Protocol p;
    p.warmup_s = get_double("warmup-s", p.warmup_s);
    p.warmup_iters = get_long("warmup-iters", p.warmup_iters);
    p.min_iters = get_long("min-iters", p.min_iters);
    p.min_time_s = get_double("min-time-s", p.min_time_s);
    p.max_iters = get_long("max-iters", p.max_iters);
    p.noise_threshold = get_double("noise-threshold", p.noise_threshold);
    p.retries = get_long("retries", p.retries);
    p.max_s = get_double("max-s", p.max_s);
    if (p.warmup_iters < 0 || p.warmup_s < 0 || p.min_time_s < 0) {
      throw UsageError("--warmup-iters, --warmup-s and --min-time-s must not be negative");
    }
    if (p.min_iters < 1 || p.max_iters < p.min_iters) {
      throw UsageError("need --min-iters >= 1 and --max-iters >= --min-iters");
    }
    if (p.noise_threshold <= 0 || p.retries < 0) throw UsageError("need --noise-threshold > 0 and --retries >= 0");
    if (p.max_s <= 0) throw UsageError("--max-s must be positive");
    return p;
  }

  static std::vector<std::string> protocol_flags() {
    return {"warmup-s", "warmup-iters", "min-iters", "min-time-s", "max-iters", "noise-threshold", "retries", "max-s"};
  }

 private:
  std::string usage_;
  bool help_ = false;
  std::map<std::string, std::vector<std::string>> values_;
};

// Parses "1x3x224x224" or "1,3,224,224" into dimensions.
inline std::vector<long long> parse_shape(const std::string& text) {
  std::vector<long long> dims;
  std::string token;
  auto flush = [&]() {
    if (token.empty()) throw UsageError("bad shape '" + text + "'; write it like 1x3x224x224");
    char* end = nullptr;
    const long long d = std::strtoll(token.c_str(), &end, 10);
    if (*end != '\0' || d < 0) throw UsageError("bad shape '" + text + "'; write it like 1x3x224x224");
    dims.push_back(d);
    token.clear();
  };
  for (const char c : text) {
    if (c == 'x' || c == ',' || c == 'X') {
      flush();
    } else if (c != ' ') {
      token += c;
    }
  }
  flush();
  return dims;
}

inline std::string shape_to_string(const std::vector<long long>& dims) {
  std::string out;
  for (size_t i = 0; i < dims.size(); ++i) {
    if (i) out += "x";
    out += std::to_string(dims[i]);
  }
  return out;
}

}  // namespace lana
