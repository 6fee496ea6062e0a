package node

import (
	"context"
	"fmt"
	"log/slog"
	"os"
)

// raftLogger adapts slog to raft.Logger. Raft's info lines (elections,
// term changes) are kept at info; its debug chatter at debug.
type raftLogger struct{ l *slog.Logger }

func (r raftLogger) Debug(v ...interface{})                 { r.l.Debug(fmt.Sprint(v...)) }
func (r raftLogger) Debugf(format string, v ...interface{}) { r.l.Debug(fmt.Sprintf(format, v...)) }
func (r raftLogger) Info(v ...interface{})                  { r.l.Info(fmt.Sprint(v...)) }
func (r raftLogger) Infof(format string, v ...interface{})  { r.l.Info(fmt.Sprintf(format, v...)) }
func (r raftLogger) Warning(v ...interface{})               { r.l.Warn(fmt.Sprint(v...)) }
func (r raftLogger) Warningf(format string, v ...interface{}) {
	r.l.Warn(fmt.Sprintf(format, v...))
}
func (r raftLogger) Error(v ...interface{})                 { r.l.Error(fmt.Sprint(v...)) }
func (r raftLogger) Errorf(format string, v ...interface{}) { r.l.Error(fmt.Sprintf(format, v...)) }
func (r raftLogger) Fatal(v ...interface{})                 { r.fatal(fmt.Sprint(v...)) }
func (r raftLogger) Fatalf(format string, v ...interface{}) { r.fatal(fmt.Sprintf(format, v...)) }
func (r raftLogger) Panic(v ...interface{})                 { panic(fmt.Sprint(v...)) }
func (r raftLogger) Panicf(format string, v ...interface{}) { panic(fmt.Sprintf(format, v...)) }

func (r raftLogger) fatal(msg string) {
	r.l.Log(context.Background(), slog.LevelError+4, msg)
	os.Exit(1)
}
