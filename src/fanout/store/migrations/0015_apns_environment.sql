-- fanout schema, version 15: an APNs device's environment (issue #22).
--
-- A debug build's token works only on Apple's sandbox endpoint, a release build's only on
-- production; sent to the other, Apple answers 400 BadDeviceToken, which would deactivate
-- the device. false (production) for every device so far and by default: a constant
-- default, so a catalogue change, whatever the table's size. Only APNs devices are ever
-- true (the API takes apns_environment for them alone). A Live Activity's tokens are APNs
-- tokens of the same app build, so they have the same choice.
ALTER TABLE devices ADD COLUMN apns_sandbox boolean NOT NULL DEFAULT false;
ALTER TABLE live_activity_tokens ADD COLUMN apns_sandbox boolean NOT NULL DEFAULT false;
