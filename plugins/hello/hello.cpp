// hello: logs a greeting with a run counter through the host's logger.
//
//   [plugins.hello]
//   interval = "2s"                      # default 2 s
//   [plugins.hello.config]
//   who = "operators"                    # default "world"
#include <tickhost/plugin.hpp>

#include <string>

class Hello : public tickhost::Plugin {
public:
    void init(tickhost::Context& ctx) override { who_ = ctx.config_string("who").value_or("world"); }

    void greet(tickhost::Context& ctx, bool is_stop) {
        if (is_stop) {
            ctx.info("goodbye, " + who_ + ", after " + std::to_string(runs_) + (runs_ == 1 ? " greeting" : " greetings"));
            return;
        }
        ctx.info("hello, " + who_ + " #" + std::to_string(++runs_));
    }

private:
    std::string who_;
    unsigned long runs_ = 0;
};

TICKHOST_PLUGIN(Hello, "hello", "1.0.0", "Logs a greeting with a run counter",
                tickhost::task<&Hello::greet>("greet", std::chrono::seconds(2)))
